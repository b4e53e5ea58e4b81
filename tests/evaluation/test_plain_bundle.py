"""A bundle hardened at training time through the whole harness (`--quick`, all four threat models, the real
service over HTTP): its one defended system is named for its defense, attacked without EoT (it is
deterministic), and the surrogate-transfer examples reach every system."""

from __future__ import annotations

import torch

from evaluation.runner import PARITY_LIMITS
from evaluation.surrogate import SoftmaxAverage
from evaluation.systems import slug
from tests.evaluation.conftest import row


def test_the_defense_is_its_own_system(plain) -> None:
    results, out = plain
    summary = results["summary"]
    assert summary["defense"]["name"] == "Seiler"
    assert summary["systems"] == {
        "undefended": {"label": "undefended classifier", "defense": "undefended"},
        "seiler": {"label": "Seiler", "defense": "Seiler"},
    }
    assert {r["system"] for r in results["cells"]} == {"undefended", "seiler"}
    assert "| undefended classifier | Seiler |" in (out / "report.md").read_text()
    for plot in results["plots"]:
        assert (out / plot).read_bytes().startswith(b"\x89PNG")


def test_every_threat_model_ran_on_it_but_known_weights(plain) -> None:
    """Its weights are all there is to know: the known-weights threat model would repeat the adaptive one."""
    results, _ = plain
    assert {r["threat"] for r in results["cells"] if r["system"] == "seiler"} == {
        "transfer",
        "surrogates",
        "adaptive",
        "blackbox",
    }
    black = [r for r in results["cells"] if r["threat"] == "blackbox"]
    assert {(r["attack"], r["system"]) for r in black} == {("Square", "seiler"), ("HopSkipJump", "seiler")}
    assert all(r["queries"] > 0 and r["requests"] > 0 for r in black)
    # its flag is the calibrated entropy, as served
    assert row(results, "transfer", "PGD", "seiler")["auc"]["entropy"] is not None


def test_the_undefended_classifier_falls_to_pgd(plain) -> None:
    undefended = row(plain[0], "transfer", "PGD", "undefended")
    assert undefended["strength"] == 0.3 and undefended["images"] >= 40
    assert undefended["accuracy"] < 0.10


def test_deterministic_systems_are_attacked_without_eot(plain) -> None:
    results, _ = plain
    adaptive = row(results, "adaptive", "PGD", "seiler")
    assert "eot_samples" not in adaptive["params"] and "purifier_gradient" not in adaptive["params"]
    variants = {(r["variant"], r["system"]) for r in results["cells"] if r["variant"]}
    assert variants == {("large ε", "undefended"), ("large ε", "seiler"), ("2x steps", "seiler")}


def test_surrogate_transfer_reaches_every_system(plain) -> None:
    results, _ = plain
    summary = results["summary"]
    surrogates = summary["transfer_surrogates"]
    assert len(surrogates["members"]) == 2
    assert all(m["clean_accuracy"] > 0.7 for m in surrogates["members"].values())
    assert surrogates["ensemble_clean_accuracy"] > 0.7
    for system in ("undefended", "seiler"):
        transferred = row(results, "surrogates", "MI-FGSM", system)
        assert transferred["images"] == 40 and transferred["source"] == "surrogates"
    # examples crafted on other architectures still fool the undefended classifier often
    undefended = row(results, "surrogates", "MI-FGSM", "undefended")
    assert undefended["accuracy"] < summary["clean"]["undefended"]["accuracy"] - 0.2
    assert "white-box ≥ transfer from surrogates" in {c["check"] for c in results["checks"]}


def test_the_twin_matched_the_graph(plain) -> None:
    parity = plain[0]["summary"]["twin_parity"]
    assert parity["noise_scales"] == 0
    assert parity["ensemble_max_abs_diff"] < PARITY_LIMITS["ensemble_max_abs_diff"]


def test_softmax_average_is_the_log_of_the_mean_softmax() -> None:
    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    x = torch.rand(5, 4)
    expected = torch.stack([torch.softmax(m(x), dim=-1) for m in members]).mean(dim=0).log()
    assert torch.allclose(SoftmaxAverage(members)(x), expected, atol=1e-6)


def test_defense_names_become_system_keys() -> None:
    assert [slug(n) for n in ("AMC", "Deep Defense", "Seiler")] == ["amc", "deep-defense", "seiler"]
