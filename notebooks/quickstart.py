# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # cropyield quickstart: one synthetic county, stage by stage
#
# This notebook (jupytext percent format: open it in Jupyter with jupytext, or run it as a
# script) runs each stage of the chain on the cached synthetic world, served through a real
# STAC API and a Range HTTP server on 127.0.0.1, exactly as a user would against Earth Search.
# Every figure and table regenerates from the seed.

# %%
import cropyield as cy
from cropyield import servers, synthetic
from cropyield.demo import demo_world

config = synthetic.WorldConfig(seed=0)
world = demo_world(config)
fields = world.fields[["field_id", "farmer_id", "crop", "declared_area_mu", "geometry"]]
fields.head()

# %% [markdown]
# ## Search, read, per-field indices

# %%
with servers.serve_world(world) as srv:
    scenes = cy.search_scenes(fields, config.start, config.end, catalog=srv.stac_url)
    obs = cy.field_observations(scenes, fields, indices=("ndvi", "ndre", "ndmi"))
print(scenes, obs.attrs.get("bytes_read"), "bytes read")
obs.head()

# %% [markdown]
# ## Series, seasons, crops

# %%
series = cy.smooth_series(obs, index="ndvi")
seasons = cy.phenology(series)
crops = cy.identify_crops(seasons, region="north_china_plain",
                          declared=fields.set_index("field_id")["crop"])
crops["crop"].value_counts()

# %% [markdown]
# ## Yield, value, credit

# %%
estimates = cy.estimate_yield(series, fields, phenology=seasons, crops=crops)
profiles = cy.credit.assess(estimates)
estimates[["field_id", "season", "crop", "yield_t_ha_p10", "yield_t_ha_p50", "yield_t_ha_p90",
           "value_cny_p50", "flags"]].head(10)

# %%
[(p.farmer_id, p.decision, p.suggested_limit_cny) for p in profiles[:10]]
