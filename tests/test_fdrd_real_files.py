"""The data module on the real FDRD caption files, with generated placeholder images.

Skipped when ../shared/fdrd (beside the clone, not in it) is absent."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from torchvision import transforms

from dualprompt.data import load_fdrd_json
from dualprompt.training.datamodule import RetrievalDataModule
from dualprompt.training.schema import DatasetConfig, DomainConfig, NegativesConfig

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "fdrd" / "captions"
# From ../shared/fdrd/README.md: identical negatives (records), negatives naming the true
# class, records with duplicate negatives, positives naming another class, lacking their own.
README = {
    "flowers102": ("flower_test.json", 263, 96, 188, 202, 0, 0),
    "oxford_pets": ("pets_test.json", 362, 344, 106, 581, 4, 6),
    "fgvc_aircraft": ("plane_test.json", 40, 10, 20, 207, 6, 85),
}

pytestmark = pytest.mark.skipif(not CAPTIONS.is_dir(), reason="../shared/fdrd is not beside this clone")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fdrd")
    (root / "captions").symlink_to(CAPTIONS)
    domains = {}
    for domain, (file, *_) in README.items():
        records, _ = load_fdrd_json(CAPTIONS / file)
        folder = root / "images" / domain
        for r in records:  # placeholder images at the names the records carry
            (folder / r.file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(folder / r.file_name, format="JPEG")
        # the shipped test file plays the train split: negatives are cleaned on train splits
        domains[domain] = DomainConfig(train=f"captions/{file}", test=f"captions/{file}",
                                       images=f"images/{domain}")
    cfg = DatasetConfig(name="fdrd_real", root=str(root), domains=domains,
                        train_domains=list(README), test_domains=list(README),
                        negatives=NegativesConfig(k=4, attribute_swap=True))
    dm = RetrievalDataModule(cfg, tokenizer=lambda t: t, train_transform=transforms.ToTensor(),
                             eval_transform=transforms.ToTensor(), batch_size=8,
                             eval_batch_size=8, num_workers=0)
    dm.setup()
    return dm


@pytest.mark.parametrize("domain", list(README))
def test_loader_reports_the_readme_defect_counts(data, domain):
    _, identical, identical_records, naming_true, dup_records, naming_other, lacking = README[domain]
    report = data.reports[f"{domain}/train"]
    assert report.negatives_identical.count == identical
    assert report.records_with_identical_negative.count == identical_records
    assert report.negatives_naming_true_class.count == naming_true
    assert report.records_with_duplicate_negatives.count == dup_records
    assert report.positives_naming_other_class.count == naming_other
    assert report.positives_lacking_class.count == lacking


@pytest.mark.parametrize("domain", list(README))
def test_cleaned_training_negatives_are_valid_and_accounted_for(data, domain):
    neg = data.reports[f"{domain}/negatives"]
    report = data.reports[f"{domain}/train"]
    # every shipped negative of the train images (90%: the rest is val) is kept or dropped once
    assert 0.85 * report.n_shipped_negatives < neg.shipped <= report.n_shipped_negatives
    assert neg.dropped_identical > 0 and neg.dropped_duplicate > 0
    assert neg.shipped == (neg.kept_shipped + neg.dropped_identical + neg.dropped_names_true_class
                           + neg.dropped_duplicate + neg.dropped_surplus)
    samples = data.domains[domain].train
    for s in samples:
        positive = s.record.captions[0]
        texts = [n.text for n in s.record.negatives]
        assert positive not in texts and len(set(texts)) == len(texts)
    held_out = len(data.domains[domain].val)
    assert len(samples) + held_out == report.n_records  # 10% held out as val, nothing lost
    assert sum(len(s.record.negatives) for s in samples) >= 3.5 * len(samples)


def test_test_gallery_keeps_every_record(data):
    for domain, (file, *_) in README.items():
        assert len(data.domains[domain].test) == data.reports[f"{domain}/test"].n_records
