"""The core (prompts, model, losses, metrics, prompt files) never needs the training stack."""
import subprocess
import sys

TRAINING_STACK = ["lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb", "torchmetrics"]
CORE = "dualprompt, dualprompt.model, dualprompt.losses, dualprompt.prompt_file, dualprompt.metrics"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout


def test_core_adds_no_training_stack_module():
    # timm (an open_clip dependency) imports wandb on its own when wandb is installed, so the
    # baseline is what `import open_clip` loads; dualprompt must add nothing of the stack.
    out = _run("import sys, open_clip; base = set(sys.modules);"
               f"import {CORE};"
               "print(sorted({m.split('.')[0] for m in set(sys.modules) - base}))")
    added = set(eval(out))
    assert "dualprompt" in added
    assert not added & set(TRAINING_STACK), added & set(TRAINING_STACK)
    loaded = set(eval(_run(f"import sys, {CORE}; print(sorted({{m.split('.')[0] for m in sys.modules}}))")))
    assert not loaded & {"lightning", "pytorch_lightning", "hydra", "omegaconf", "torchmetrics"}


def test_core_works_with_the_training_stack_unimportable():
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in TRAINING_STACK)
    out = _run(f"import sys; {block}; import {CORE}; print(dualprompt.DualPromptCLIP.__name__)")
    assert out.strip() == "DualPromptCLIP"
