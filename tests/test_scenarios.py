"""Named scenarios: shipped with the package, resolved below explicit keys, built on emoji."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from adamodal.config import read_scenario, resolve, scenario_names
from adamodal.errors import ConfigError

#: name -> (image+text, image-only, text-only clients, classes)
EXPECTED = {
    "seed-16-2-2": (16, 2, 2, 9),
    "seed-26-2-2": (26, 2, 2, 9),
    "few-multimodal": (4, 8, 8, 9),
    "carmfl": (2, 8, 0, 9),
    "sample-missing": (20, 0, 0, 9),
    "aligned-skew": (8, 6, 6, 9),
    "subcategory": (16, 2, 2, 98),
}


def test_the_shipped_scenarios() -> None:
    assert scenario_names() == sorted(EXPECTED)
    for name in EXPECTED:
        description, values = read_scenario(name)
        assert len(description) > 20, name
        assert "description" not in values and values["dataset"] == "emoji", name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_resolves_to_its_keys(name: str) -> None:
    cfg = resolve({}, {"scenario": name})
    mm, img, txt, _ = EXPECTED[name]
    assert cfg["scenario"] == name and "description" not in cfg
    assert (cfg["clients.multimodal"], cfg["clients.image_only"], cfg["clients.text_only"]) == (mm, img, txt)
    for key, value in read_scenario(name)[1].items():
        assert cfg[key] == value, (name, key)


def test_scenario_values() -> None:
    few = resolve({}, {"scenario": "few-multimodal"})
    assert few["partition"] == "dirichlet" and few["partition.alpha"] == 0.1
    missing = resolve({}, {"scenario": "sample-missing"})
    assert missing["missing.image"] == 0.5 and missing["missing.text"] == 0.5
    assert resolve({}, {"scenario": "aligned-skew"})["partition"] == "aligned"
    assert resolve({}, {"scenario": "subcategory"})["emoji.label"] == "subcategory"


def test_explicit_keys_win_over_the_scenario() -> None:
    cfg = resolve({"partition.alpha": 0.3}, {"scenario": "few-multimodal", "clients.text_only": "2"})
    assert cfg["partition.alpha"] == 0.3 and cfg["clients.text_only"] == 2
    assert cfg["clients.image_only"] == 8  # the rest still from the scenario
    # the command line names another scenario than the file: the command line's counts
    cfg = resolve({"scenario": "carmfl"}, {"scenario": "seed-26-2-2"})
    assert cfg["scenario"] == "seed-26-2-2" and cfg["clients.multimodal"] == 26
    # and an empty name switches the file's scenario off: back to the defaults
    cfg = resolve({"scenario": "carmfl"}, {"scenario": ""})
    assert cfg["scenario"] == "" and cfg["clients.multimodal"] == 16
    # a resolved config (a run's config.toml) resolves to itself
    full = resolve({}, {"scenario": "aligned-skew", "rounds": "3"})
    assert resolve(dict(full)) == full


def test_unknown_scenario_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        resolve({}, {"scenario": "carmf"})
    msg = str(info.value)
    assert msg.startswith("scenario: unknown scenario 'carmf'")
    assert all(name in msg for name in EXPECTED)


def test_cli_lists_the_scenarios() -> None:
    r = subprocess.run([sys.executable, "-m", "adamodal.cli", "scenarios"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    for name in EXPECTED:
        assert name in lines and len(lines[name].split()) > 5, name
    bad = subprocess.run([sys.executable, "-m", "adamodal.cli", "config", "--set", "scenario=nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "carmfl" in bad.stderr and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def bundles():
    """The emoji bundle per label option, loaded once."""
    from adamodal.cache import cache_dir
    from adamodal.data import get_source

    cache: dict = {}

    def get(cfg):
        label = cfg["emoji.label"]
        if label not in cache:
            cache[label] = get_source("emoji", cfg.section("emoji")).load(cache_dir())
        return cache[label]

    return get


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_scenario_builds_with_its_client_counts(name: str, bundles) -> None:
    from adamodal.data.scenario import build_scenario

    cfg = resolve({}, {"scenario": name})
    bundle = bundles(cfg)
    mm, img, txt, classes = EXPECTED[name]
    assert bundle.num_classes == classes
    scen = build_scenario(bundle, cfg)
    assert scen.counts() == {"multimodal": mm, "image_only": img, "text_only": txt}
    assert all(c.num_train >= 5 for c in scen.clients)
    # the server test set is seen three ways whatever the mix: carmfl's image+text clients
    # are scored with both modalities, its image-only clients with images only
    assert {"both", "image", "text"} <= set(scen.test)
    assert scen.test["both"].has_txt.all() and not scen.test["image"].has_txt.any()


def test_sample_missing_drops_a_modality_in_most_rows(bundles) -> None:
    """p = 0.5 per modality, a row never losing both: 25% paired, 37.5% each single modality."""
    from adamodal.data.scenario import build_scenario

    cfg = resolve({}, {"scenario": "sample-missing"})
    scen = build_scenario(bundles(cfg), cfg)
    views = [c.splits["train"] for c in scen.clients]
    img, txt = np.concatenate([v.has_img for v in views]), np.concatenate([v.has_txt for v in views])
    assert (img | txt).all()
    assert 0.18 < (img & txt).mean() < 0.32
    assert 0.3 < (img & ~txt).mean() < 0.45 and 0.3 < (~img & txt).mean() < 0.45


def test_aligned_skew_pulls_the_unimodal_groups_apart(bundles) -> None:
    from adamodal.data.scenario import build_scenario

    def histogram(scen, group: str) -> np.ndarray:
        idx = np.concatenate([c.splits["train"].idx for c in scen.clients if c.group == group])
        h = np.bincount(bundle.class_ids()[idx], minlength=bundle.num_classes)
        return h / h.sum()

    cfg = resolve({}, {"scenario": "aligned-skew"})
    bundle = bundles(cfg)
    tv = {}
    for partition in ("aligned", "dirichlet"):
        scen = build_scenario(bundle, resolve({}, {"scenario": "aligned-skew", "partition": partition}))
        tv[partition] = 0.5 * np.abs(histogram(scen, "image_only") - histogram(scen, "text_only")).sum()
    assert tv["aligned"] > 0.6 and tv["dirichlet"] < tv["aligned"] - 0.3
