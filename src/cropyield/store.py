"""A resumable results store: partitioned Parquet/GeoParquet tables and a manifest.

A county or national run is split into partitions (spatial blocks of fields, see
:func:`cropyield.pipeline.partition_fields`). Each finished partition writes its tables to
``<root>/parts/<partition>/<table>.parquet``; every file is written under a temporary name
and then renamed, so a reader never sees half a file. The manifest ``<root>/store_manifest.json``
lists the completed partitions and is rewritten (atomically, last) after each partition's
files are in place: a partition counts as done only once it is in the manifest. A run killed
at any moment (``kill -9`` included) therefore leaves at worst the files of a partition that
is not in the manifest yet; the resumed run redoes that partition (overwriting those files)
and skips every partition the manifest lists.

``root`` is a local folder or any fsspec URL (``s3://bucket/run``, ``gs://...``,
``memory://...``). Partial results are readable while a run is going on:
``ResultStore(root).read("estimates")`` concatenates the completed partitions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pandas as pd

from ._io import with_small_attrs
from .errors import ConfigError

__all__ = ["ResultStore", "StoreMismatchError", "MANIFEST", "fingerprint"]

#: Name of the manifest file at the root of a store.
MANIFEST = "store_manifest.json"  # not manifest.json: PipelineResult.write owns that name
#: Names a run writes at the root of its store (what ``restart`` removes; nothing else is).
OWNED = frozenset({MANIFEST, "parts", "scenes.json", "scenes.parquet", "observations.parquet",
                   "series.parquet", "phenology.parquet", "crops.parquet", "estimates.parquet",
                   "credit_profiles.json", "summary.json"})
#: Store layout version (bumped when the layout changes; older stores must be restarted).
LAYOUT_VERSION = 1


class StoreMismatchError(ConfigError):
    """The store holds a run with different inputs; resume would mix two runs."""


def fingerprint(obj: Any) -> str:
    """A short stable hash (sha256, 16 hex digits) of a JSON-serialisable description."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultStore:
    """Partitioned results of one run, on a local path or an fsspec URL.

    Parameters
    ----------
    root : str or path
        Folder (created) or fsspec URL.
    storage_options : dict, optional
        Passed to ``fsspec`` (credentials, endpoint); never written to the store.

    Notes
    -----
    Only the process that drives a run (the dask client, not the workers) writes the
    manifest, so there is a single writer; partition files may be written by workers.

    Examples
    --------
    :func:`cropyield.estimate` with ``store=`` writes one; read it back (a local folder
    here, any fsspec URL works):

    >>> import tempfile
    >>> import pandas as pd
    >>> from cropyield.store import ResultStore
    >>> tmp = tempfile.TemporaryDirectory()
    >>> st = ResultStore(tmp.name)
    >>> st.write_partition("p0000", {"estimates": pd.DataFrame({"field_id": ["F1"],
    ...                                                         "season": [1]})})
    {'estimates': 1}
    >>> st.commit("p0000", {"n_fields": 1})
    >>> st.completed()
    ['p0000']
    >>> st.read("estimates")["season"].tolist()
    [1]
    >>> tmp.cleanup()
    """

    def __init__(self, root, *, storage_options: Mapping[str, Any] | None = None):
        from fsspec.core import url_to_fs

        self.url = os.fspath(root)
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    # ----------------------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """Path inside the store (in the filesystem's own notation)."""
        return "/".join([self.root, *parts])

    def _local(self) -> bool:
        protocol = self.fs.protocol
        protocol = protocol if isinstance(protocol, str) else protocol[0]
        return protocol in ("file", "local")

    # ---------------------------------------------------------------------- atomic writes
    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write ``data`` to ``relpath`` atomically (temporary name in the same folder,
        then rename); returns the full path."""
        final = self.path(relpath)
        folder = final.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        if self._local():
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        else:  # object stores: a PUT is atomic; the rename keeps the same protocol elsewhere
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
            self.fs.mv(tmp, final)
        return final

    def write_table(self, relpath: str, df: pd.DataFrame) -> str:
        """Write a DataFrame (GeoParquet when it is a GeoDataFrame) atomically."""
        buf = io.BytesIO()
        if hasattr(df, "geometry") and "geometry" in df.columns:
            with_small_attrs(df).to_parquet(buf, index=False)
        else:
            with_small_attrs(pd.DataFrame(df)).to_parquet(buf, index=False)
        return self.write_bytes(relpath, buf.getvalue())

    def write_json(self, relpath: str, obj: Any) -> str:
        """Write JSON atomically."""
        return self.write_bytes(relpath, json.dumps(obj, indent=1, sort_keys=True,
                                                    default=str).encode())

    def read_json(self, relpath: str, default: Any = None) -> Any:
        """Read JSON from ``relpath`` (``default`` when absent)."""
        p = self.path(relpath)
        if not self.fs.exists(p):
            return default
        with self.fs.open(p, "rb") as fh:
            return json.loads(fh.read().decode())

    def exists(self, relpath: str) -> bool:
        """True when ``relpath`` exists in the store."""
        return self.fs.exists(self.path(relpath))

    # -------------------------------------------------------------------- run and manifest
    def manifest(self) -> dict[str, Any]:
        """The manifest: ``{"layout", "run", "partitions": {id: info}}`` (empty when new)."""
        return self.read_json(MANIFEST, default=None) or {
            "layout": LAYOUT_VERSION, "run": None, "partitions": {}}

    def begin(self, run: Mapping[str, Any], *, restart: bool = False) -> dict[str, Any]:
        """Start or resume a run described by ``run`` (a JSON-able dict with a
        ``"fingerprint"`` key).

        Returns the completed partitions (id → info) that the run may skip.

        Raises
        ------
        StoreMismatchError
            When the store holds a different run and ``restart`` is False.
        """
        man = self.manifest()
        old = man.get("run")
        if restart or old is None:
            if restart and self.fs.exists(self.root):
                self.clear()
            man = {"layout": LAYOUT_VERSION, "run": dict(run), "partitions": {}}
            self._write_manifest(man)
            return {}
        if man.get("layout") != LAYOUT_VERSION or old.get("fingerprint") != run.get("fingerprint"):
            raise StoreMismatchError(
                f"{self.url} holds results of another run (inputs or options differ: "
                f"{old.get('fingerprint')} vs {run.get('fingerprint')}); pass --restart "
                "(restart=True) to start over, or choose another output folder")
        return dict(man.get("partitions", {}))

    def clear(self) -> None:
        """Remove what a run wrote to the store (manifest first, so a reader never sees a
        manifest that lists deleted files). Other files in the folder are left alone."""
        if self.exists(MANIFEST):
            self.fs.rm(self.path(MANIFEST))
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name in OWNED or name.startswith(".tmp-"):
                self.fs.rm(entry, recursive=True)

    def _write_manifest(self, man: Mapping[str, Any]) -> None:
        self.write_json(MANIFEST, man)

    def commit(self, partition: str, info: Mapping[str, Any]) -> None:
        """Mark ``partition`` complete (its files must already be in place)."""
        man = self.manifest()
        man.setdefault("partitions", {})[partition] = dict(info)
        self._write_manifest(man)

    def completed(self) -> list[str]:
        """Ids of the completed partitions, sorted (the order tables are concatenated in,
        whatever order the partitions finished in)."""
        return sorted(self.manifest().get("partitions", {}))

    # --------------------------------------------------------------------- partition tables
    def write_partition(self, partition: str, tables: Mapping[str, pd.DataFrame]) -> dict:
        """Write the tables of one partition (atomically each); returns ``{table: rows}``.

        Does not touch the manifest: call :meth:`commit` after (the driver does).
        """
        rows = {}
        for name, df in tables.items():
            self.write_table(f"parts/{partition}/{name}.parquet", df)
            rows[name] = int(len(df))
        return rows

    def read_partition(self, partition: str, table: str) -> pd.DataFrame:
        """One table of one partition (GeoDataFrame when it was written with geometry)."""
        p = self.path("parts", partition, f"{table}.parquet")
        with self.fs.open(p, "rb") as fh:
            data = fh.read()
        return _read_parquet_bytes(data)

    def iter_table(self, table: str, partitions: Iterable[str] | None = None
                   ) -> Iterator[pd.DataFrame]:
        """The table partition by partition (completed partitions in manifest order)."""
        for pid in (self.completed() if partitions is None else partitions):
            yield self.read_partition(pid, table)

    def read(self, table: str) -> pd.DataFrame:
        """The table over all completed partitions (empty DataFrame when none is done)."""
        parts = list(self.iter_table(table))
        if not parts:
            return pd.DataFrame()
        return _concat(parts)

    def consolidate(self, table: str, relpath: str | None = None,
                    partitions: Iterable[str] | None = None) -> str | None:
        """Stream the table's partitions into one Parquet file ``relpath`` (default
        ``<table>.parquet``), one partition in memory at a time; atomic. Returns the path,
        or None when no partition is done."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        pids = self.completed() if partitions is None else list(partitions)
        files = [self.path("parts", pid, f"{table}.parquet") for pid in pids]
        if not files:
            return None
        schemas = []
        for f in files:
            with self.fs.open(f, "rb") as fh:
                schemas.append(pq.read_schema(fh))
        try:
            schema = pa.unify_schemas([_drop_nulls(s, schemas) for s in schemas],
                                      promote_options="permissive")
        except (pa.ArrowInvalid, TypeError):
            schema = schemas[0]
        # GeoParquet metadata of the first file (same CRS and geometry column everywhere)
        meta = dict(schemas[0].metadata or {})
        schema = schema.with_metadata(meta)
        final = self.path(relpath or f"{table}.parquet")
        folder = final.rsplit("/", 1)[0]
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        with self.fs.open(tmp, "wb") as out:
            with pq.ParquetWriter(out, schema) as writer:
                for f in files:
                    with self.fs.open(f, "rb") as fh:
                        t = pq.read_table(fh)
                    t = t.select(schema.names).cast(schema) if t.schema != schema else t
                    writer.write_table(t)
        if self._local():
            os.replace(tmp, final)
        else:
            self.fs.mv(tmp, final)
        return final


def _drop_nulls(s, schemas):
    """Schema ``s`` where all-null columns take the type other partitions give them."""
    import pyarrow as pa

    fields = []
    for f in s:
        if pa.types.is_null(f.type):
            for other in schemas:
                j = other.get_field_index(f.name)
                if j >= 0 and not pa.types.is_null(other.field(j).type):
                    f = f.with_type(other.field(j).type)
                    break
        fields.append(f)
    return pa.schema(fields, metadata=s.metadata)


def _read_parquet_bytes(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    meta = pq.read_schema(io.BytesIO(data)).metadata or {}
    if b"geo" in meta:
        import geopandas as gpd

        return gpd.read_parquet(io.BytesIO(data))
    return pd.read_parquet(io.BytesIO(data))


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p.columns)]
    if not parts:
        return pd.DataFrame()
    nonempty = [p for p in parts if len(p)] or parts[:1]
    out = pd.concat(nonempty, ignore_index=True)
    if hasattr(parts[0], "geometry") and "geometry" in parts[0].columns:
        import geopandas as gpd

        out = gpd.GeoDataFrame(out, geometry="geometry", crs=parts[0].crs)
    return out

