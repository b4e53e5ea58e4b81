"""The orchestrator: plan the cells of one run (threat model x attack x strength x system), run them with a
progress bar, cache each finished cell so an interrupted run resumes where it stopped, then check and report.

Threat models:
- transfer (gray-box): crafted once on the undefended classifier, replayed through every system;
- known-weights (APuDAE's gray-box): crafted once on the bundle's own classifier with its noise off, replayed
  likewise: the attacker has the weights, not the RSE noise or the purifier (skipped where the bundle has
  neither: there it would be the adaptive threat model again);
- surrogates: crafted once on an ensemble of classifiers of other architectures, replayed likewise;
- adaptive (white-box): crafted on each system's own differentiable twin (EoT over the RSE noise, BPDA or the
  exact gradient through the purifier), judged on that system's real graphs;
- blackbox: Square and HopSkipJump through the running service's HTTP API, queries counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from evaluation import attacks as A
from evaluation.config import EvalConfig
from evaluation.metrics import cell_figures, perturbation_norms
from evaluation.recipes import BundleRecipe, recipe_for
from evaluation.remote import RemoteModel, ServiceProcess
from evaluation.surrogate import Sources
from evaluation.systems import (
    DEFENDED,
    PURIFIER,
    UNDEFENDED,
    BundleSystems,
    Defended,
    EnsembleOnly,
    FlagAware,
    FlagAwareLoss,
    Outcome,
    PurifierOnly,
    System,
    Undefended,
    has_noise,
    torch_probabilities,
)
from evaluation.twin import Twin, check_parity, load_twin
from models.attacks import art_classifier
from models.data import ImageDataset
from models.rse import without_noise
from service.manifest import Manifest
from service.runtime import EnsembleEngine, PurifierEngine, ScreenEngine

log = logging.getLogger(__name__)
CPU = ["CPUExecutionProvider"]
EVALUATED_GRAPHS = ("ensemble", "purifier", "screen")
"""The graph roles the harness judges systems on: the float32 ones the service serves by default."""
FLAG_AWARE = "flag-aware"
SURROGATES = "surrogates"
"""The source of the surrogate-transfer cells: the ensemble of the recipe's surrogate architectures."""
KNOWN_WEIGHTS = "known-weights"
"""The source of the known-weights cells: the bundle's classifier with its noise off."""
PARITY_LIMITS = {
    "ensemble_max_abs_diff": 1e-4,
    "purifier_mean_abs_diff": 1e-4,
    "purifier_label_disagreement": 0.0,
}
REFORM_PARITY_LIMITS = PARITY_LIMITS | {"purifier_mean_abs_diff": 5e-3}
"""For a purifier that reforms after APuDAE steps (see `evaluation.twin.check_parity`): a version of the
CIFAR-10 bundle measured 8.0e-4 on 64 test images (docs/ROBUSTNESS.md, version 5), the noise-free classifier
answering the same on all of them."""


@dataclass(frozen=True)
class Cell:
    threat: str
    attack: A.Attack
    strength: float | None
    source: str
    """Where the examples are crafted: "undefended" (transfer), "known-weights", "surrogates", a system's
    twin, or a system over HTTP."""
    systems: tuple[str, ...]
    """The systems the examples are judged on."""
    images: int
    config: EvalConfig
    variant: str = ""
    """Non-empty for the sanity checks' extra runs ("large ε", "2x steps", "2x EoT")."""
    twin_settings: tuple[str, ...] = ()
    """The config fields the source's adaptive model depends on (see `System.twin_settings`)."""

    def settings(self) -> dict[str, Any]:
        """The attack's own settings and the run settings that shape its result."""
        return {
            **self.attack.settings(self.config),
            "seed": self.config.seed,
            "samples": self.config.samples,
            "surrogate_epochs": self.config.surrogate_epochs,
            "purify_skip_z": self.config.purify_skip_z,
            **{name: getattr(self.config, name) for name in self.twin_settings},
        }

    def key(self) -> str:
        """File name of the cached result: what, where, on how many images, and a hash of the settings, so
        a cell is reused only under the same settings while a wider run re-runs only its new cells."""
        strength = "none" if self.strength is None else f"{self.strength:g}"
        variant = self.variant.replace(" ", "").replace("ε", "eps")
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:10]
        parts = (self.threat, self.attack.name, strength, self.source, variant, str(self.images), digest)
        return "-".join(x for x in parts if x).replace("+", "_").replace(":", "_")


@dataclass
class CellResult:
    """One row per judged system, with the per-image arrays the checks and plots need (not in results.json)."""

    cell: Cell
    rows: list[dict[str, Any]]
    per_image: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """system -> {"correct", "flagged", "linf", "score:<name>"}."""


def cells_folder(cache_dir: Path, manifest: Manifest) -> Path:
    """Where the cached cells of one bundle version lie: keyed on the graphs the harness runs, so that a
    graph it never runs (the opt-in float16 ensemble) added to the bundle later keeps its finished cells."""
    graphs = "".join(
        manifest.graphs[role].sha256 for role in sorted(EVALUATED_GRAPHS) if role in manifest.graphs
    )
    return cache_dir / "cells" / hashlib.sha256(graphs.encode()).hexdigest()[:12]


class Evaluation:
    def __init__(
        self,
        bundle_dir: Path,
        config: EvalConfig,
        *,
        cache_dir: Path | None,
        service_url: str | None = None,
        data_dir: Path | None = None,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        self.config = config
        self.threads = threads
        self.device = device
        """Where torch work runs: the undefended classifier's training and the white-box attacks."""
        self.cache_dir = cache_dir
        self.service_url = service_url
        self.recipe: BundleRecipe = _manifest_recipe(bundle_dir)
        self.twin: Twin = load_twin(bundle_dir, self.recipe)
        self.manifest = self.twin.manifest
        split = self.recipe.split(self.manifest, data_dir)
        count = max(config.transfer_images, config.adaptive_images, config.blackbox_images)
        self.test: ImageDataset = split.test.subset(np.arange(min(count, len(split.test))))
        self.samples = config.samples or self.manifest.rse.default_samples
        self.budgets = config.budgets or self.recipe.linf_budgets
        self.parity = check_parity(self.twin, split.test.images[:64])
        spec = self.manifest.purifier
        limits = REFORM_PARITY_LIMITS if spec is not None and spec.reform and spec.steps else PARITY_LIMITS
        failed = {k: v for k, v in self.parity.items() if v > limits.get(k, np.inf)}
        if failed:
            raise RuntimeError(f"the torch twin does not match the ONNX graphs: {failed}")
        sources = Sources(self.recipe, self.manifest, split.train, cache_dir, config.surrogate_epochs, device)
        self.surrogate, self.surrogate_figures = sources.undefended()
        self.sources: dict[str, nn.Module] = {UNDEFENDED: self.surrogate}
        """The models the non-adaptive white-box threat models craft on, by cell source."""
        self.transfer_figures: dict[str, Any] = {}
        if SURROGATES in config.threats:
            self.sources[SURROGATES], self.transfer_figures = self._surrogates(sources)
        if KNOWN_WEIGHTS in config.threats:
            if has_noise(self.manifest) or self.twin.purifier is not None:
                self.sources[KNOWN_WEIGHTS] = without_noise(self.twin.classifier)
            else:
                log.info("known-weights skipped: %s hides no defense from its weights", self.manifest.name)
        self.systems = self._build_systems(bundle_dir)
        served = [name for name, system in self.systems.items() if system.http_purify is not None]
        self.served = tuple(sorted(served, key=lambda name: not self.systems[name].http_purify))
        """The systems the service serves, its default (purifying where there is a purifier) first."""
        self.product = self.served[0]
        self.clean = {name: system.outcome(self.test.images) for name, system in self.systems.items()}
        self.results: list[CellResult] = []
        self.cached = 0
        """Cells taken from the cache of an earlier run (their rows keep that run's seconds)."""

    def _surrogates(self, sources: Sources) -> tuple[nn.Module, dict[str, Any]]:
        """The surrogate ensemble, and its members' figures with their clean accuracy on the test images."""
        ensemble, members = sources.surrogates()

        def accuracy(model: nn.Module) -> float:
            return float((torch_probabilities(model, self.test.images).argmax(1) == self.test.labels).mean())

        for model, figures in zip(ensemble.members, members.values(), strict=True):
            figures["clean_accuracy"] = accuracy(model)
        figures = {
            "members": members,
            "ensemble_clean_accuracy": accuracy(ensemble),
            "test_images": len(self.test),
        }
        log.info("transfer surrogates: %s", figures)
        return ensemble, figures

    def _build_systems(self, bundle_dir: Path) -> dict[str, System]:
        graphs = self.manifest.graphs
        options = {"providers": CPU, "intra_op_threads": self.threads}
        purifier_engine = (
            PurifierEngine(bundle_dir / graphs["purifier"].path, **options) if "purifier" in graphs else None
        )
        bundle = BundleSystems(
            manifest=self.manifest,
            ensemble=EnsembleEngine(bundle_dir / graphs["ensemble"].path, **options),
            purifier_engine=purifier_engine,
            screen=ScreenEngine(bundle_dir / graphs["screen"].path, **options)
            if "screen" in graphs
            else None,
            skip_z=self.config.purify_skip_z,
            twin_classifier=self.twin.classifier,
            twin_purifier=self.twin.purifier,
            surrogate=self.surrogate,
            samples=self.samples,
        )
        members: list[System] = [Undefended(self.surrogate), EnsembleOnly(bundle)]
        if purifier_engine is not None:
            members += [PurifierOnly(bundle), Defended(bundle)]
        return {system.name: system for system in members}

    def _adaptive(
        self,
        attack: A.Attack,
        strength: float | None,
        name: str,
        images: int,
        config: EvalConfig,
        variant: str = "",
    ) -> Cell:
        """A white-box cell crafted on system `name`'s own adaptive model and judged on that system."""
        twin = self.systems[name].twin_settings
        return Cell("adaptive", attack, strength, name, (name,), images, config, variant, twin)

    # --- planning -----------------------------------------------------------------------------------------
    def plan(self) -> list[Cell]:
        config, budgets = self.config, self.budgets
        cells: list[Cell] = []

        def count(attack: A.Attack, default: int) -> int:
            return config.minimum_norm_images if attack.strength != "epsilon" else default

        chosen = {
            threat: tuple(a for a in group if config.attacks is None or a.name in config.attacks)
            for threat, group in A.BY_THREAT.items()
            if threat in config.threats
        }
        for threat, source in (
            ("transfer", UNDEFENDED),
            (KNOWN_WEIGHTS, KNOWN_WEIGHTS),
            (SURROGATES, SURROGATES),
        ):
            if source not in self.sources:
                continue
            for attack in chosen.get(threat, ()):
                for strength in attack.strengths(config, budgets, threat):
                    n = count(attack, config.transfer_images)
                    cells.append(Cell(threat, attack, strength, source, tuple(self.systems), n, config))
        white_box = chosen.get("adaptive", ())
        for name in self.systems:
            for attack in white_box:
                for strength in attack.strengths(config, budgets, "adaptive"):
                    cells.append(
                        self._adaptive(attack, strength, name, count(attack, config.adaptive_images), config)
                    )
        if A.PGD in white_box:
            # NOTE: the attacks above ignore the flag; these also push the reconstruction z-score,
            # the flag's strongest score, under its threshold.
            cells += [
                self._adaptive(A.PGD, eps, name, config.adaptive_images, config, FLAG_AWARE)
                for name in (PURIFIER, DEFENDED)
                if name in self.systems
                for eps in budgets
            ]
            if config.sanity:
                cells += self._sanity_cells(budgets)
        for name in self.served:
            for attack in chosen.get("blackbox", ()):
                n = config.hsj_images if attack is A.HOP_SKIP_JUMP else config.blackbox_images
                for strength in attack.strengths(config, budgets, "blackbox"):
                    cells.append(Cell("blackbox", attack, strength, f"http:{name}", (name,), n, config))
        return cells

    def _sanity_cells(self, budgets: tuple[float, ...]) -> list[Cell]:
        config, n = self.config, self.config.sanity_images
        cells = [
            self._adaptive(A.PGD, self.recipe.large_epsilon, name, n, config, "large ε")
            for name in self.systems
        ]
        # NOTE: the middle budget, where the attacks do not yet win everywhere; at the largest one every
        # variant reaches 0% and the comparison could not fail.
        middle = budgets[len(budgets) // 2]
        more_steps = replace(config, pgd_steps=2 * config.pgd_steps)
        cells.append(self._adaptive(A.PGD, middle, self.product, n, more_steps, "2x steps"))
        more_draws = replace(config, eot_samples=2 * config.eot_samples)
        # NOTE: only where the twins average noise draws: a deterministic classifier has no EoT to double.
        if has_noise(self.manifest):
            cells += [
                self._adaptive(A.PGD, middle, name, n, more_draws, "2x EoT") for name in reversed(self.served)
            ]
        return cells

    # --- running ------------------------------------------------------------------------------------------
    def run(self) -> list[CellResult]:
        cells = self.plan()
        with contextlib.ExitStack() as stack:
            remote: dict[str, tuple[RemoteModel, Outcome]] = {}
            for cell in tqdm(cells, desc="attacks", unit="cell"):
                cached = self._load(cell)
                if cached is not None:
                    self.results.append(cached)
                    self.cached += 1
                    continue
                if cell.threat == "blackbox" and not remote:
                    remote = self._connect(stack)
                cell_started = time.perf_counter()
                result = (
                    self._run_blackbox(cell, *remote[cell.systems[0]])
                    if cell.threat == "blackbox"
                    else (self._run_white_box(cell))
                )
                for row in result.rows:
                    row["seconds"] = round(time.perf_counter() - cell_started, 1)
                self._save(result)
                self.results.append(result)
                log.info("%s", "; ".join(_describe(row) for row in result.rows))
        return self.results

    def _run_white_box(self, cell: Cell) -> CellResult:
        images, labels = self.test.images[: cell.images], self.test.labels[: cell.images]
        if cell.threat == "adaptive":
            model = self.systems[cell.source].adaptive_model(
                cell.config.eot_samples, cell.config.purifier_gradient
            )
        else:
            model = self.sources[cell.source]
        classes, loss = len(self.manifest.classes), None
        if cell.variant == FLAG_AWARE:
            assert self.twin.purifier is not None
            model, classes = FlagAware(model, self.twin.purifier), classes + 1
            # NOTE: aim half a standard deviation under the threshold, so the example stays unflagged
            # after the served graph's own rounding.
            loss = FlagAwareLoss(self.manifest.calibration.thresholds["reconstruction"] - 0.5)
        estimator = art_classifier(model, self.manifest.input.shape, classes, loss, device=self.device)
        attack = cell.attack.build(estimator, cell.strength, cell.attack.settings(cell.config))
        adversarial = A.run_attack(attack, images, labels, cell.config.seed)
        # NOTE: ART moved the model (the twin's modules or a source) to `device` in place; everything
        # after the attack (the replay, the next cell's sources) expects them on the CPU.
        model.cpu()
        outcomes = {name: self.systems[name].outcome(adversarial) for name in cell.systems}
        return self._result(cell, images, labels, adversarial, outcomes, cell.settings(), {})

    def _connect(self, stack: contextlib.ExitStack) -> dict[str, tuple[RemoteModel, Outcome]]:
        url = self.service_url or stack.enter_context(
            ServiceProcess(self.twin.bundle_dir.parent.parent, self.manifest.name, threads=self.threads)
        )
        remote = {}
        n = self.config.blackbox_images
        for name in self.served:
            model = RemoteModel(url, self.manifest.name, purify=bool(self.systems[name].http_purify))
            stack.callback(model.close)
            remote[name] = (model, model.outcome(self.test.images[:n]))
        return remote

    def _run_blackbox(self, cell: Cell, remote: RemoteModel, clean: Outcome) -> CellResult:
        from art.estimators.classification import BlackBoxClassifierNeuralNetwork

        images, labels = self.test.images[: cell.images], self.test.labels[: cell.images]
        # NOTE: the "neural network" flavour only because ART's Square attack insists on it; it is still
        # nothing but the predict function.
        estimator = BlackBoxClassifierNeuralNetwork(
            remote.probabilities,
            self.manifest.input.shape,
            len(self.manifest.classes),
            clip_values=(0.0, 1.0),
        )
        attack = cell.attack.build(estimator, cell.strength, cell.attack.settings(cell.config))
        queries, requests = remote.queries, remote.requests
        adversarial = A.run_attack(attack, images, labels, cell.config.seed)
        spent = {
            "queries": remote.queries - queries,
            "queries_per_image": (remote.queries - queries) / len(images),
            "requests": remote.requests - requests,
        }
        outcome = remote.outcome(adversarial)
        return self._result(
            cell,
            images,
            labels,
            adversarial,
            {cell.systems[0]: outcome},
            cell.settings(),
            spent,
            _prefix(clean, len(images)),
        )

    def _result(
        self,
        cell: Cell,
        images: np.ndarray,
        labels: np.ndarray,
        adversarial: np.ndarray,
        outcomes: dict[str, Outcome],
        params: dict[str, Any],
        extra: dict[str, Any],
        clean_override: Outcome | None = None,
    ) -> CellResult:
        linf = np.abs(adversarial - images).reshape(len(images), -1).max(axis=1)
        norms = perturbation_norms(images, adversarial)
        rows, per_image = [], {}
        for name, outcome in outcomes.items():
            clean = clean_override or _prefix(self.clean[name], len(images))
            figures = cell_figures(labels, clean, outcome) | norms
            correct = outcome.predictions == labels
            if cell.attack.strength is None:
                # NOTE: a minimum-norm attack's example only counts within a budget if it is that small.
                figures["accuracy_at_epsilon"] = {
                    f"{eps:g}": float((correct | (linf > eps + 1e-6)).mean()) for eps in self.budgets
                }
            rows.append(
                {
                    "threat": cell.threat,
                    "attack": cell.attack.name,
                    "strength_name": cell.attack.strength,
                    "strength": cell.strength,
                    "source": cell.source,
                    "system": name,
                    "variant": cell.variant,
                    "params": params,
                    **extra,
                    **figures,
                }
            )
            per_image[name] = {"correct": correct, "flagged": outcome.flagged, "linf": linf} | {
                f"score:{k}": v for k, v in outcome.scores.items()
            }
        return CellResult(cell, rows, per_image)

    # --- cache --------------------------------------------------------------------------------------------
    def _cache_paths(self, cell: Cell) -> tuple[Path, Path] | None:
        if self.cache_dir is None:
            return None
        folder = cells_folder(self.cache_dir, self.manifest)
        return folder / f"{cell.key()}.json", folder / f"{cell.key()}.npz"

    def _save(self, result: CellResult) -> None:
        paths = self._cache_paths(result.cell)
        if paths is None:
            return
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(json.dumps(result.rows))
        np.savez(
            paths[1], **{f"{s}|{k}": v for s, arrays in result.per_image.items() for k, v in arrays.items()}
        )

    def _load(self, cell: Cell) -> CellResult | None:
        paths = self._cache_paths(cell)
        if paths is None or not (paths[0].is_file() and paths[1].is_file()):
            return None
        per_image: dict[str, dict[str, np.ndarray]] = {}
        with np.load(paths[1]) as arrays:
            for key in arrays.files:
                system, name = key.split("|", 1)
                per_image.setdefault(system, {})[name] = arrays[key]
        return CellResult(cell, json.loads(paths[0].read_text()), per_image)

    def footing(self) -> dict[str, Any]:
        """What must be equal for two runs' figures to be compared: the same test images (data, split, how
        many) attacked at the same budgets with the same preset, image counts and seed, and transfer examples
        crafted on the same undefended classifier."""
        data, config = self.manifest.data, self.config
        return {
            "dataset": self.recipe.dataset,
            "undefended_classifier": {
                k: self.surrogate_figures[k] for k in ("epochs", "seed", "train_images")
            },
            "split": {"seed": data.seed, "test": data.test, "calibration": data.calibration},
            "test_images": len(self.test),
            "budgets": list(self.budgets),
            "preset": config.preset,
            "seed": config.seed,
            **{
                name: getattr(config, name)
                for name in (
                    "transfer_images",
                    "adaptive_images",
                    "minimum_norm_images",
                    "blackbox_images",
                    "hsj_images",
                    "sanity_images",
                )
            },
        }

    def summary(self) -> dict[str, Any]:
        """Everything but the cells: what was evaluated, with what, and the clean baseline."""
        return {
            "bundle": {
                "name": self.manifest.name,
                "version": self.manifest.version,
                "path": str(self.twin.bundle_dir),
                "graphs": {role: g.sha256 for role, g in self.manifest.graphs.items()},
            },
            "dataset": self.recipe.dataset,
            "test_images": len(self.test),
            "footing": self.footing(),
            "samples": self.samples,
            "defense": None if self.manifest.defense is None else self.manifest.defense.model_dump(),
            "systems": {name: {"label": s.label, "defense": s.defense} for name, s in self.systems.items()},
            "calibration": self.manifest.calibration.model_dump(),
            "config": asdict(self.config),
            "twin_parity": self.parity,
            "cells_from_cache": self.cached,
            "undefended_classifier": self.surrogate_figures,
            "transfer_surrogates": self.transfer_figures,
            "clean": {
                name: {
                    "accuracy": float((o.predictions == self.test.labels).mean()),
                    "flag_rate": float(o.flagged.mean()) if o.scores else None,
                    "images": len(o),
                }
                for name, o in self.clean.items()
            },
        }


def _manifest_recipe(bundle_dir: Path) -> BundleRecipe:
    from service.manifest import load_manifest

    return recipe_for(load_manifest(bundle_dir, verify=True))


def _prefix(outcome: Outcome, n: int) -> Outcome:
    return Outcome(
        outcome.predictions[:n], {k: v[:n] for k, v in outcome.scores.items()}, outcome.flagged[:n]
    )


def _describe(row: dict[str, Any]) -> str:
    strength = "" if row["strength"] is None else f" {row['strength_name']}={row['strength']:g}"
    flag = f", flagged {row['flag_rate']:.0%}" if "flag_rate" in row else ""
    variant = f" [{row['variant']}]" if row["variant"] else ""
    return f"{row['threat']} {row['attack']}{strength}{variant} on {row['system']}: accuracy {row['accuracy']:.1%}{flag}"
