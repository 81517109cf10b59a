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


def test_a_pipeline_loads_a_prompt_file_and_encodes_without_the_training_stack(
        tmp_path, tiny_config_file):
    """What `pip install dualprompt` (no [train] extra) must do: load a prompt file onto the
    CLIP and encode, with Lightning, Hydra, wandb and torchmetrics unimportable."""
    from tests.conftest import write_prompt_file
    prompts = write_prompt_file(tmp_path / "p.safetensors", seed=3)
    block = "; ".join(f"sys.modules[{name!r}] = None" for name in TRAINING_STACK)
    code = f"""import sys; {block}
import open_clip, torch, dualprompt
open_clip.add_model_config({str(tiny_config_file)!r})
torch.manual_seed(3)
clip = open_clip.create_model({tiny_config_file.stem!r}, pretrained=None).eval()
model = dualprompt.load_prompts({str(prompts)!r}, clip)
tokens = open_clip.get_tokenizer("ViT-B-32")(["a red striped triangle"])
with torch.no_grad():
    t = model.encode_text(tokens, normalize=True)
    i = model.encode_image(torch.zeros(1, 3, 32, 32), normalize=True)
print(tuple(t.shape), tuple(i.shape), sorted(m for m in {TRAINING_STACK!r} if sys.modules.get(m)))
"""
    assert _run(code).strip() == "(1, 32) (1, 32) []"


def test_a_command_without_the_train_extra_says_what_to_install():
    code = ("import sys, runpy; sys.modules['hydra'] = None; sys.argv = ['train'];"
            "runpy.run_module('dualprompt.train', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: `python -m dualprompt.train` needs the training "
                                   "stack (hydra not installed): pip install 'dualprompt[train]'")
