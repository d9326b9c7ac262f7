"""The structures a campaign starts from (prototypes, data sets) and the references it computes."""

from __future__ import annotations

import logging

from discovery.errors import DataError

log = logging.getLogger(__name__)


def withheld_candidates(config) -> list:
    """The known phases ``validation.withhold`` keeps from the campaign, built from their prototypes."""
    from discovery.data.references import build_reference_phase
    from discovery.structures import make_candidate

    return [make_candidate(build_reference_phase(p.formula, p.prototype), "withheld",
                           conditions={"prototype": p.prototype}) for p in config.validation.withhold]


def seed_candidates(config, withheld: list | None = None) -> list:
    """Known structures the campaign starts from: prototypes and the configured datasets, less any
    that match a ``withheld`` phase (StructureMatcher within the formula)."""
    from discovery.data import loaders, prototypes
    from discovery.structures import make_candidate

    elements = config.chemistry.elements
    seeds = []
    if config.data.prototypes:
        seeds += [make_candidate(s, "seed:prototype") for s in
                  prototypes.seed_structures(elements, config.chemistry.max_atoms)]
    for src in config.data.cdvae_csv:
        loaded = loaders.load_cdvae_csv(src.path, max_rows=src.max_rows,
                                        elements=elements if src.only_campaign_elements else None)
        _report_load(src.path, loaded, "rows")
        seeds += loaded.candidates
    for folder in config.data.cif_dirs:
        loaded = loaders.load_cif_dir(folder, elements=elements)
        _report_load(folder, loaded, "files")
        seeds += loaded.candidates
    if withheld:
        from discovery.hits import matching

        kept = [s for s in seeds if matching(s.pmg, [w.pmg for w in withheld]) is None]
        log.info("validation: %d seed structures withheld (%s)", len(seeds) - len(kept),
                 ", ".join(f"{w.formula} {w.conditions['prototype']}" for w in withheld))
        seeds = kept
    return seeds


def _report_load(source, loaded, unit: str) -> None:
    """Log what a dataset gave; a dataset that is corrupt throughout is a user error."""
    if loaded.n_corrupt and not loaded.candidates:
        raise DataError(f"{source}: all {loaded.n_corrupt} {unit} are unreadable ({loaded.errors[0]})")
    log.info("%s: %d structures loaded, %d corrupt %s skipped%s", source, len(loaded.candidates),
             loaded.n_corrupt, unit, f" (first: {loaded.errors[0]})" if loaded.errors else "")


def reference_candidates(config) -> list:
    """Elemental references and the campaign's reference phases, computed once per campaign."""
    from discovery.data.references import build_reference_phase, elemental_reference
    from discovery.structures import make_candidate

    refs = []
    for symbol in config.chemistry.elements:
        structure, hint = elemental_reference(symbol)
        refs.append(make_candidate(structure, "reference", conditions={"calc": hint, "role": "element"}))
    for phase in config.chemistry.reference_phases:
        structure = build_reference_phase(phase.formula, phase.prototype)
        refs.append(make_candidate(structure, "reference",
                                   conditions={"role": "phase", "prototype": phase.prototype}))
    return refs
