"""Trial models from their checkpoints into MLflow: the child run's copy and the best.

Each is logged as the pyfunc of theme_classifier (tuning.tracking.model_package): raw images in,
class names out, with the study's preprocessing and the trial's normalization inside.
"""

from __future__ import annotations

from theme_classifier.preprocess import Preprocessing
from tuning import storage
from tuning.errors import StudyFailedError
from tuning.tracking import model_package, retrying, runs
from tuning.tracking.ledger import TrialRecord


class ModelLogger:
    def __init__(self, *, plan, preprocess):
        self.plan = plan
        self.preprocess = preprocess   # the study's data.PreprocessSettings

    def package(self, record: TrialRecord):
        """The trial's network weights, its params and the preprocessing to ship."""
        if record.checkpoint_path is None or record.checkpoint_removed:
            raise StudyFailedError(
                f"trial {record.number}'s checkpoint is not on the storage "
                f"({self.plan.config.infra.ray.storage_path}): its model cannot be logged.",
                fix="its child run keeps its metrics; run the study again with "
                    "checkpoint.num_to_keep of 2 or more if this repeats.")
        params = self.plan.config.trial_params(record.params)
        state = self._checkpoint_state(record.checkpoint_path)
        # Streaming data has no train array to recompute from; its checkpoints all
        # carry their statistics.
        train_images = getattr(self.plan.data.train, "images", None)
        mean, std = model_package.checkpoint_stats(state, train_images)
        preprocessing = model_package.preprocessing_of(self.preprocess, mean=mean, std=std)
        return state["model"], params, preprocessing

    def _checkpoint_state(self, fs_path: str) -> dict:
        # Tune gives a checkpoint's path on the storage's own filesystem ("bucket/key"
        # on S3): read it through the filesystem of ray.storage_path, as Tune wrote it.
        from tuning.trial.trainable import CHECKPOINT_FILE

        data = storage.read_on_storage(self.plan.config.infra.ray.storage_path,
                                       f"{fs_path.rstrip('/')}/{CHECKPOINT_FILE}")
        return storage.torch_load(data)

    def _log(self, run_id: str, record: TrialRecord, *, name: str,
             validate: bool = True) -> tuple[str, Preprocessing]:
        network, params, preprocessing = self.package(record)
        uri = model_package.log_classifier(
            run_id, name=name, network_state=network, architecture=params.model.name,
            class_names=self.plan.theme.class_names, preprocessing=preprocessing,
            example_image=self._example_image(),
            params={"trial_number": record.number, **record.params},
            note=self._note(record, name, preprocessing), validate=validate)
        # Its metric columns in the Models tab: the trial's last result, linked from the
        # trial's own run (the parent's copy too: they are that trial's figures).
        runs.link_model_metrics(retrying.client(), record.child_run_id,
                                model_package.model_id_of(uri), record.last_result)
        return uri, preprocessing

    def _note(self, record: TrialRecord, name: str, preprocessing: Preprocessing) -> str:
        plan = self.plan
        what = ("The best trial's model, copied to the study's parent run"
                if name == runs.BEST_MODEL_ARTIFACT else "A trial's model")
        return (f"{what}: trial {record.number} of study '{plan.study_name}' on theme "
                f"'{plan.theme.name}', {plan.config.study.metric} = {record.value}. "
                + model_package.description(plan.theme.class_names, preprocessing))

    def _example_image(self) -> str:
        data = self.plan.data
        source = int((data.test.sources if len(data.test) else data.train.sources)[0])
        return self.plan.theme.samples[source].path

    def log_trial_model(self, record: TrialRecord) -> None:
        """Log a finished trial's model into its child run, with the config it ran with."""
        if record.checkpoint_path is None or record.model_uri is not None:
            return
        record.model_uri, _ = self._log(record.child_run_id, record,
                                        name=runs.trial_model_name(record.number),
                                        validate=False)   # the best's copy is validated
        params = self.plan.config.trial_params(record.params)
        runs.log_yaml(retrying.client(), record.child_run_id, params.model_dump(),
                             "trial_config.yaml")

    def log_best(self, best: TrialRecord, *, parent_run_id: str) -> tuple[str, Preprocessing]:
        """Copy the best model to the parent run; return the URI to register and the
        preprocessing it ships with.

        The registered version points at the best trial's own model when it was
        logged (log_models all or best), else at the parent run's copy.
        """
        if self.plan.config.infra.mlflow.log_models == "best":
            self.log_trial_model(best)
        parent_uri, preprocessing = self._log(parent_run_id, best,
                                              name=runs.BEST_MODEL_ARTIFACT)
        return best.model_uri or parent_uri, preprocessing
