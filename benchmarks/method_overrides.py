"""Hydra overrides that spell out what a benchmark row of ours holds, shared by the benchmark
scripts, so that a row's label stays true as the default method moves (rows are resumed from
runs made at earlier revisions, under earlier defaults)."""
NO_CONSISTENCY = ["loss.text_consistency=0", "loss.image_consistency=0",
                  "loss.logit_consistency=0"]
CONSISTENCY = ["loss.text_consistency=25", "loss.image_consistency=10",  # PromptSRC's weights
               "loss.logit_consistency=1", "loss.consistency_distance=l1"]
NO_ADAPTERS = ["prompt.image_adapter_ratio=0", "prompt.text_adapter_ratio=0"]
ADAPTERS = ["prompt.image_adapter_ratio=0.2", "prompt.text_adapter_ratio=0.2"]  # CLIP-Adapter's
K4, K1 = ["dataset.negatives.k=4"], ["dataset.negatives.k=1"]
# L_cate's positive: an unweighted copy beside unweighted negatives (as first shipped), or the
# weighted positive of L_con against negatives weighted by their own image
UNWEIGHTED_NEGATIVES = ["loss.reweight_negatives=false"]
REWEIGHTED_NEGATIVES = ["loss.reweight_negatives=true"]
# the full method as first shipped: dual prompts, re-weighting, category-aware negatives (K = 4),
# no consistency terms, no adapters
FIRST_SHIPPED = [*NO_CONSISTENCY, *NO_ADAPTERS, *K4, *UNWEIGHTED_NEGATIVES]
