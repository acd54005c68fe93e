"""What launch.py prints before and after a study."""

from __future__ import annotations

import shlex

from tuning.config.search_space import format_space
from tuning.redact import redact_url
from tuning.tracking.registry import champion_uri


def print_dry_run(plan) -> None:
    c = plan.config
    data = plan.data
    print(f"theme {plan.theme.id} '{plan.theme.name}': {len(plan.theme.samples)} images, "
          f"{plan.theme.num_classes} classes ({', '.join(plan.theme.class_names)})")
    print(f"data: train {len(data.train.labels)}, valid {len(data.valid.labels)}, "
          f"test {len(data.test.labels)} at {c.params.input_size} px"
          f"{' (from cache)' if data.from_cache else ''}"
          f"{f', {len(data.skipped)} unreadable skipped' if data.skipped else ''}")
    print(f"study '{plan.study_name}': {c.study.direction} {c.study.metric}, "
          f"{c.study.n_trials} trials, timeout {c.study.timeout or 'none'}, "
          f"storage {redact_url(plan.storage_url) or 'in memory'}"
          f"{f' ({plan.stored_trials} trials stored)' if plan.stored_trials else ''}")
    r = c.infra.resources
    print(f"per trial: {r.cpu:g} CPU, {r.gpu:g} GPU; up to {c.infra.max_concurrent_trials} "
          f"at once; scheduler {c.infra.scheduler.type}; parent run '{c.run_name}'")
    print("search space:")
    for line in format_space(c.space):
        print(line)
    print("dry run: configs, theme and data are valid; nothing was started.")


def print_outcome(plan, outcome) -> None:
    print()
    print(f"parent run:      {outcome.parent_run_id} (experiment '{plan.theme.name}')")
    print(f"best trial:      {outcome.best_number}")
    print(f"best value:      {plan.config.study.metric} = {outcome.best_value:.4f}")
    print(f"best params:     {outcome.best_params}")
    print(f"best run:        {outcome.best_run_id}")
    print(f"registered:      {outcome.model_name} version {outcome.model_version}")
    registration = outcome.registration
    if registration is not None:
        print(f"champion:        version {registration.champion_version} "
              f"({registration.reason})")
        print(f"champion URI:    {champion_uri(registration.model_name)}")
        example = plan.theme.samples[0].path if plan.theme.samples else "IMAGE"
        print(f"try it:          python predict.py --model "
              f"{champion_uri(registration.model_name)} {shlex.quote(example)}")
    counts = ", ".join(f"{v} {k.lower()}" for k, v in outcome.counts.items() if v)
    print(f"trials:          {counts}")
