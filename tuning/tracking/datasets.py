"""The theme as MLflow datasets: what each run trained, validated and was tested on.

MLflow 3's Datasets column and filter read a run's dataset inputs. A run links a
(name, digest) pair once, with one context, so the three splits are three small meta
datasets: `<theme>-train` (context training), `<theme>-valid` (validation) and
`<theme>-test` (test). Each carries the theme's content hash as its digest (two studies
on different images or labels are told apart), the Django theme as its source, the
columns of a sample (path, label, split) and the split's size; never image bytes.
"""

from __future__ import annotations

import json

from mlflow.entities import Dataset, DatasetInput, InputTag

from tuning.data.theme import ThemeSpec

CONTEXT_TAG = "mlflow.data.context"
# split -> MLflow's context name for it (the words of mlflow.data's own contexts)
CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}
# MLflow's UI links a source of this type by its "url".
SOURCE_TYPE = "external"
# MLflow's stores keep a digest of at most 36 characters; 32 hex digits of the sha256
# tell contents apart as well as the whole (the parent run's tag keeps it whole).
DIGEST_LENGTH = 32
SCHEMA = json.dumps({"mlflow_colspec": [
    {"type": "string", "name": "path", "required": True},
    {"type": "long", "name": "label", "required": True},
    {"type": "string", "name": "split", "required": True}]})


def theme_source(theme_id: int) -> str:
    """Where the dataset lives: the theme's row in the study database."""
    return f"themetune://theme/{theme_id}"


def dataset_name(theme_name: str, split: str) -> str:
    return f"{theme_name}-{split}"


def study_datasets(theme: ThemeSpec, content_hash: str, data) -> list[DatasetInput]:
    """The three split datasets of a study's data (tuning.data.TrialData)."""
    digest = content_hash[:DIGEST_LENGTH]
    source = json.dumps({"url": theme_source(theme.id)})
    inputs = []
    for split, context in CONTEXTS.items():
        rows = len(getattr(data, split).labels)
        profile = json.dumps({"num_rows": rows, "split": split,
                              "num_classes": theme.num_classes,
                              "theme_images": len(theme.samples)})
        dataset = Dataset(name=dataset_name(theme.name, split), digest=digest,
                          source_type=SOURCE_TYPE, source=source, schema=SCHEMA,
                          profile=profile)
        inputs.append(DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)]))
    return inputs
