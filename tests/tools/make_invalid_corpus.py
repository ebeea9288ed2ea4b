import copy
import pathlib

import yaml

out = pathlib.Path(__file__).resolve().parents[1] / "invalid"
out.mkdir(parents=True, exist_ok=True)
for f in out.glob("*.yaml"):
    f.unlink()
TR = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "bad"},
    "spec": {},
}
RL = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "RLRun",
    "metadata": {"name": "bad"},
    "spec": {"agents": [{"name": "ppo", "algorithm": "ppo"}]},
}
SW = {
    "apiVersion": "tradewind.dev/v1alpha1",
    "kind": "Sweep",
    "metadata": {"name": "bad"},
    "spec": {
        "template": {"kind": "TrainingRun", "spec": {"training": {"epochs": 3}}},
        "objective": {"metric": "val_loss"},
        "searchSpace": {
            "training.optimizer.learningRate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}
        },
    },
}

SW_RL = {
    **SW,
    "spec": {
        **SW["spec"],
        "template": {"kind": "RLRun", "spec": RL["spec"]},
        "searchSpace": {
            "agents[ppo].hyperparameters.gamma": {"type": "uniform", "low": 0.9, "high": 0.99}
        },
    },
}


def merge(base, patch):
    base = copy.deepcopy(base)
    for k, v in patch.items():
        if v is DELETE:
            base.pop(k, None)
        elif isinstance(v, Replace):
            base[k] = v.value
        elif isinstance(v, dict) and v and isinstance(base.get(k), dict):
            base[k] = merge(base[k], v)
        else:
            base[k] = v
    return base


DELETE = object()


class Replace:
    def __init__(self, value):
        self.value = value


cases = [
    # name, base, patch, field path, message fragment, family
    (
        "tr-nodes-zero",
        TR,
        {"spec": {"nodes": 0}},
        "spec.nodes",
        "greater than or equal to 1",
        "range",
    ),
    ("tr-nodes-string", TR, {"spec": {"nodes": "two"}}, "spec.nodes", "valid integer", "type"),
    (
        "tr-procs-too-many",
        TR,
        {"spec": {"procsPerNode": 64}},
        "spec.procsPerNode",
        "less than or equal to 16",
        "range",
    ),
    ("tr-device-tpu", TR, {"spec": {"device": "tpu"}}, "spec.device", "'cpu' or 'cuda'", "enum"),
    (
        "tr-entrypoint-module-and-command",
        TR,
        {"spec": {"entrypoint": {"module": "pkg.train", "command": ["python", "train.py"]}}},
        "spec.entrypoint.module",
        "set exactly one of module",
        "combination",
    ),
    (
        "tr-entrypoint-module-name",
        TR,
        {"spec": {"entrypoint": {"module": "my-pkg.train"}}},
        "spec.entrypoint.module",
        "should match pattern",
        "format",
    ),
    (
        "tr-entrypoint-launcher-none-procs",
        TR,
        {"spec": {"procsPerNode": 2, "entrypoint": {"module": "pkg.train", "launcher": "none"}}},
        "spec.entrypoint.launcher",
        "launcher none starts one process per pod",
        "combination",
    ),
    ("tr-unknown-top-field", TR, {"spec": {"gpus": 8}}, "spec.gpus", "unknown field", "unknown"),
    (
        "tr-model-type",
        TR,
        {"spec": {"model": {"type": "transformer"}}},
        "spec.model.type",
        "'hybrid'",
        "enum",
    ),
    (
        "tr-model-extension-name",
        TR,
        {"spec": {"model": {"type": "TwExample.TinyMLP"}}},
        "spec.model.type",
        "or an extension's <package>.<name>",
        "format",
    ),
    (
        "tr-model-params-builtin",
        TR,
        {"spec": {"model": {"type": "cnn", "params": {"hidden": 8}}}},
        "spec.model.params",
        "params are for an extension's model",
        "combination",
    ),
    (
        "rl-environment-type-name",
        RL,
        {"spec": {"environment": {"type": "Gym.TradingEnv"}}},
        "spec.environment.type",
        "or an extension's <package>.<name>",
        "format",
    ),
    (
        "rl-environment-params-builtin",
        RL,
        {"spec": {"environment": {"type": "portfolio", "params": {"penalty": 1}}}},
        "spec.environment.params",
        "params are for an extension's environment",
        "combination",
    ),
    (
        "tr-model-unknown-field",
        TR,
        {"spec": {"model": {"layers": 3}}},
        "spec.model.layers",
        "unknown field",
        "unknown",
    ),
    (
        "tr-dropout-one",
        TR,
        {"spec": {"model": {"dropout": 1.0}}},
        "spec.model.dropout",
        "less than 1",
        "range",
    ),
    (
        "tr-conv-missing-kernel",
        TR,
        {"spec": {"model": {"cnn": {"layers": [{"outChannels": 16}]}}}},
        "spec.model.cnn.layers[0].kernelSize",
        "required",
        "required",
    ),
    (
        "tr-conv-empty",
        TR,
        {"spec": {"model": {"cnn": {"layers": []}}}},
        "spec.model.cnn.layers",
        "at least 1",
        "range",
    ),
    (
        "tr-cnn-heads-divisor",
        TR,
        {
            "spec": {
                "model": {
                    "cnn": {"layers": [{"outChannels": 10, "kernelSize": 3}], "attentionHeads": 4}
                }
            }
        },
        "spec.model.cnn.attentionHeads",
        "divisible",
        "combination",
    ),
    (
        "tr-lstm-heads-divisor",
        TR,
        {
            "spec": {
                "model": {"lstm": {"hiddenSize": 30, "bidirectional": False, "attentionHeads": 4}}
            }
        },
        "spec.model.lstm.attentionHeads",
        "divisible",
        "combination",
    ),
    (
        "tr-fusion-method",
        TR,
        {"spec": {"model": {"fusion": {"method": "sum"}}}},
        "spec.model.fusion.method",
        "'concat' or 'cross_attention'",
        "enum",
    ),
    (
        "tr-fusion-dim-heads",
        TR,
        {"spec": {"model": {"fusion": {"method": "cross_attention", "dim": 100, "heads": 8}}}},
        "spec.model.fusion.dim",
        "divisible",
        "combination",
    ),
    (
        "tr-heads-one-class",
        TR,
        {"spec": {"model": {"heads": {"numClasses": 1}}}},
        "spec.model.heads.numClasses",
        "greater than or equal to 2",
        "range",
    ),
    (
        "tr-uncertainty-without-regression",
        TR,
        {"spec": {"model": {"heads": {"regression": False, "uncertainty": True}}}},
        "spec.model.heads.uncertainty",
        "needs regression",
        "combination",
    ),
    (
        "tr-data-source",
        TR,
        {"spec": {"data": {"source": "http://example.com/x.csv"}}},
        "spec.data.source",
        "should match pattern",
        "format",
    ),
    (
        "tr-data-dates-reversed",
        TR,
        {"spec": {"data": {"start": "2020-01-01", "end": "2019-01-01"}}},
        "spec.data.end",
        "before end",
        "combination",
    ),
    (
        "tr-data-date-format",
        TR,
        {"spec": {"data": {"start": "January 2020"}}},
        "spec.data.start",
        "valid date",
        "type",
    ),
    (
        "tr-data-interval",
        TR,
        {"spec": {"data": {"interval": "2h"}}},
        "spec.data.interval",
        "'1d'",
        "enum",
    ),
    (
        "tr-data-feature-unknown",
        TR,
        {"spec": {"data": {"features": ["returns", "vwap"]}}},
        "spec.data.features[1]",
        "'rsi'",
        "enum",
    ),
    (
        "tr-data-feature-repeat",
        TR,
        {"spec": {"data": {"features": ["rsi", "rsi"]}}},
        "spec.data.features",
        "must not repeat",
        "combination",
    ),
    (
        "tr-data-lookback-one",
        TR,
        {"spec": {"data": {"lookbackWindow": 1}}},
        "spec.data.lookbackWindow",
        "greater than or equal to 2",
        "range",
    ),
    (
        "tr-data-normalization",
        TR,
        {"spec": {"data": {"normalization": "l2"}}},
        "spec.data.normalization",
        "'robust'",
        "enum",
    ),
    (
        "tr-data-buy-threshold-negative",
        TR,
        {"spec": {"data": {"labels": {"buyThreshold": -0.01}}}},
        "spec.data.labels.buyThreshold",
        "greater than 0",
        "range",
    ),
    (
        "tr-data-split-too-big",
        TR,
        {"spec": {"data": {"split": {"validation": 0.5, "test": 0.4}}}},
        "spec.data.split",
        "at least 20%",
        "combination",
    ),
    (
        "tr-synthetic-on-real-source",
        TR,
        {"spec": {"data": {"source": "stocks", "synthetic": {"numSymbols": 3}}}},
        "spec.data.synthetic",
        "only allowed when source is 'synthetic'",
        "combination",
    ),
    (
        "tr-synthetic-too-big",
        TR,
        {"spec": {"data": {"source": "synthetic", "synthetic": {"numSymbols": 5000}}}},
        "spec.data.synthetic.numBars",
        "numSymbols x numBars is at most 20000000 bars",
        "combination",
    ),
    (
        "tr-epochs-float",
        TR,
        {"spec": {"training": {"epochs": 2.5}}},
        "spec.training.epochs",
        "valid integer",
        "type",
    ),
    (
        "tr-optimizer-name",
        TR,
        {"spec": {"training": {"optimizer": {"name": "lion"}}}},
        "spec.training.optimizer.name",
        "'adamw'",
        "enum",
    ),
    (
        "tr-learning-rate-zero",
        TR,
        {"spec": {"training": {"optimizer": {"learningRate": 0}}}},
        "spec.training.optimizer.learningRate",
        "greater than 0",
        "range",
    ),
    (
        "tr-scheduler-name",
        TR,
        {"spec": {"training": {"scheduler": {"name": "linear"}}}},
        "spec.training.scheduler.name",
        "'cosine_warm_restarts'",
        "enum",
    ),
    (
        "tr-scheduler-interval-batch-cosine",
        TR,
        {"spec": {"training": {"scheduler": {"name": "cosine", "interval": "batch"}}}},
        "spec.training.scheduler.interval",
        "interval batch is for cosine_warm_restarts and onecycle",
        "combination",
    ),
    (
        "tr-grad-clip-negative",
        TR,
        {"spec": {"training": {"gradClip": -1}}},
        "spec.training.gradClip",
        "greater than 0",
        "range",
    ),
    (
        "tr-loss-weights-all-zero",
        TR,
        {"spec": {"training": {"lossWeights": {"classification": 0, "regression": 0}}}},
        "spec.training.lossWeights",
        "positive weight",
        "combination",
    ),
    (
        "tr-early-stopping-mode",
        TR,
        {"spec": {"training": {"earlyStopping": {"mode": "lowest"}}}},
        "spec.training.earlyStopping.mode",
        "'min' or 'max'",
        "enum",
    ),
    (
        "tr-monitor-unknown",
        TR,
        {"spec": {"training": {"earlyStopping": {"monitor": "val_los"}}}},
        "spec.training.earlyStopping.monitor",
        "'val_loss', 'val_accuracy'",
        "enum",
    ),
    (
        "tr-monitor-term-off",
        TR,
        {
            "spec": {
                "model": {"heads": {"regression": False, "uncertainty": False}},
                "training": {"earlyStopping": {"monitor": "val_regression"}},
            }
        },
        "spec.training.earlyStopping.monitor",
        "a loss term the run does not compute",
        "combination",
    ),
    (
        "tr-curriculum-metric-term-off",
        TR,
        {"spec": {"training": {"curriculum": {"progressMetric": "val_sequence"}}}},
        "spec.training.curriculum.progressMetric",
        "a loss term the run does not compute",
        "combination",
    ),
    (
        "tr-curriculum-stage-thresholds",
        TR,
        {"spec": {"training": {"curriculum": {"stages": 3, "stageThresholds": [0.5]}}}},
        "spec.training.curriculum.stageThresholds",
        "stages - 1 of them",
        "combination",
    ),
    (
        "tr-curriculum-two-bars",
        TR,
        {
            "spec": {
                "training": {
                    "curriculum": {"progressThreshold": 0.6, "stageThresholds": [0.5, 0.6]}
                }
            }
        },
        "spec.training.curriculum.stageThresholds",
        "not both",
        "combination",
    ),
    (
        "rl-dqn-agent-continuous",
        RL,
        {"spec": {"agents": [{"name": "d", "algorithm": "dqn", "actionSpace": "continuous"}]}},
        "spec.agents",
        "dqn needs a discrete action space",
        "combination",
    ),
    (
        "rl-sac-agent-discrete",
        RL,
        {
            "spec": {
                "agents": [{"name": "s", "algorithm": "sac", "actionSpace": "discrete"}],
                "environment": {"actionSpace": "continuous"},
            }
        },
        "spec.agents",
        "sac and td3 need a continuous action space",
        "combination",
    ),
    (
        "rl-sac-ent-coef-auto",
        RL,
        {
            "spec": {
                "agents": [
                    {"name": "a", "algorithm": "sac", "hyperparameters": {"ent_coef": "auto"}}
                ]
            }
        },
        "spec.agents[0].hyperparameters.ent_coef",
        "leave ent_coef unset for SB3's 'auto'",
        "type",
    ),
    (
        "tr-adversarial-alpha",
        TR,
        {"spec": {"training": {"adversarial": {"epsilon": 0.01, "alpha": 0.05}}}},
        "spec.training.adversarial.alpha",
        "must not exceed epsilon",
        "combination",
    ),
    (
        "tr-curriculum-strategy",
        TR,
        {"spec": {"training": {"curriculum": {"strategy": "loss"}}}},
        "spec.training.curriculum.strategy",
        "'volatility' or 'regime'",
        "enum",
    ),
    (
        "tr-meta-and-curriculum",
        TR,
        {"spec": {"training": {"metaLearning": {}, "curriculum": {}}}},
        "spec.training.metaLearning",
        "cannot be combined",
        "combination",
    ),
    (
        "tr-seq2seq-on-hybrid",
        TR,
        {"spec": {"training": {"seq2seq": {"outputLength": 3}}}},
        "spec.training.seq2seq",
        "lstm or attention_lstm",
        "combination",
    ),
    (
        "tr-fp16-on-cpu",
        TR,
        {"spec": {"training": {"precision": "fp16"}}},
        "spec.training.precision",
        "needs device cuda",
        "combination",
    ),
    (
        "tr-precision-int8",
        TR,
        {"spec": {"training": {"precision": "int8"}}},
        "spec.training.precision",
        "'bf16'",
        "enum",
    ),
    (
        "tr-walk-forward-too-small",
        TR,
        {"spec": {"evaluation": {"walkForwardWindow": 50}}},
        "spec.evaluation.walkForwardWindow",
        "must exceed",
        "combination",
    ),
    (
        "tr-transaction-cost-huge",
        TR,
        {"spec": {"evaluation": {"transactionCost": 0.5}}},
        "spec.evaluation.transactionCost",
        "less than or equal to 0.1",
        "range",
    ),
    (
        "tr-checkpoint-storage-scheme",
        TR,
        {"spec": {"checkpoint": {"storage": "gs://bucket/x"}}},
        "spec.checkpoint.storage",
        "should match pattern",
        "format",
    ),
    (
        "tr-checkpoint-keep-zero",
        TR,
        {"spec": {"checkpoint": {"keepLast": 0}}},
        "spec.checkpoint.keepLast",
        "greater than or equal to 1",
        "range",
    ),
    (
        "tr-resume-from",
        TR,
        {"spec": {"checkpoint": {"resumeFrom": "yesterday"}}},
        "spec.checkpoint.resumeFrom",
        "should match pattern",
        "format",
    ),
    (
        "tr-tracking-unknown",
        TR,
        {"spec": {"tracking": {"project": "x"}}},
        "spec.tracking.project",
        "unknown field",
        "unknown",
    ),
    (
        "tr-wandb-project-slash",
        TR,
        {"spec": {"tracking": {"wandb": {"project": "desk/alpha"}}}},
        "spec.tracking.wandb.project",
        "a W&B project name has none of",
        "combination",
    ),
    (
        "rl-wandb-mode-unknown",
        RL,
        {"spec": {"tracking": {"wandb": {"project": "alpha", "mode": "disabled"}}}},
        "spec.tracking.wandb.mode",
        "'offline'",
        "enum",
    ),
    (
        "tr-max-restarts-negative",
        TR,
        {"spec": {"maxRestarts": -1}},
        "spec.maxRestarts",
        "greater than or equal to 0",
        "range",
    ),
    (
        "tr-suspend-string",
        TR,
        {"spec": {"suspend": "maybe"}},
        "spec.suspend",
        "valid boolean",
        "type",
    ),
    (
        "tr-deadline-zero",
        TR,
        {"spec": {"activeDeadlineSeconds": 0}},
        "spec.activeDeadlineSeconds",
        "greater than or equal to 1",
        "range",
    ),
    (
        "tr-toleration-operator",
        TR,
        {"spec": {"podTemplate": {"tolerations": [{"key": "a", "operator": "In"}]}}},
        "spec.podTemplate.tolerations[0].operator",
        "'Exists' or 'Equal'",
        "enum",
    ),
    (
        "tr-mount-unknown-volume",
        TR,
        {"spec": {"podTemplate": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}}},
        "spec.podTemplate.volumeMounts",
        "must name an entry of volumes",
        "combination",
    ),
    (
        "tr-mount-relative-path",
        TR,
        {
            "spec": {
                "podTemplate": {
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "volumeMounts": [{"name": "data", "mountPath": "data"}],
                }
            }
        },
        "spec.podTemplate.volumeMounts[0].mountPath",
        "should match pattern",
        "format",
    ),
    (
        "tr-env-missing-name",
        TR,
        {"spec": {"podTemplate": {"env": [{"value": "1"}]}}},
        "spec.podTemplate.env[0].name",
        "required",
        "required",
    ),
    (
        "tr-resources-quantity",
        TR,
        {"spec": {"resources": {"requests": {"memory": "lots"}}}},
        "spec.resources.requests.memory",
        "not a Kubernetes quantity",
        "format",
    ),
    (
        "tr-name-uppercase",
        merge(TR, {"metadata": {"name": "MyRun"}}),
        {},
        "metadata.name",
        "starting with a letter",
        "name",
    ),
    (
        "tr-name-too-long",
        merge(TR, {"metadata": {"name": "a" * 64}}),
        {},
        "metadata.name",
        "at most 63",
        "name",
    ),
    ("rl-missing-agents", RL, {"spec": {"agents": DELETE}}, "spec.agents", "required", "required"),
    ("rl-empty-agents", RL, {"spec": {"agents": []}}, "spec.agents", "at least 1", "range"),
    (
        "rl-agent-missing-algorithm",
        RL,
        {"spec": {"agents": [{"name": "a"}]}},
        "spec.agents[0].algorithm",
        "required",
        "required",
    ),
    (
        "rl-algorithm-unknown",
        RL,
        {"spec": {"agents": [{"name": "a", "algorithm": "trpo"}]}},
        "spec.agents[0].algorithm",
        "'ppo'",
        "enum",
    ),
    (
        "rl-agent-name-invalid",
        RL,
        {"spec": {"agents": [{"name": "My_Agent", "algorithm": "ppo"}]}},
        "spec.agents[0].name",
        "should match pattern",
        "format",
    ),
    (
        "rl-agent-names-repeat",
        RL,
        {
            "spec": {
                "agents": [{"name": "a", "algorithm": "ppo"}, {"name": "a", "algorithm": "a2c"}]
            }
        },
        "spec.agents",
        "unique",
        "combination",
    ),
    (
        "rl-hyperparameter-unknown",
        RL,
        {
            "spec": {
                "agents": [
                    {"name": "a", "algorithm": "ppo", "hyperparameters": {"buffer_size": 1000}}
                ]
            }
        },
        "spec.agents[0].hyperparameters.buffer_size",
        "unknown ppo hyperparameter",
        "unknown",
    ),
    (
        "rl-hyperparameter-range",
        RL,
        {
            "spec": {
                "agents": [{"name": "a", "algorithm": "ppo", "hyperparameters": {"gamma": 1.5}}]
            }
        },
        "spec.agents[0].hyperparameters.gamma",
        "less than or equal to 1",
        "range",
    ),
    (
        "rl-sac-discrete",
        RL,
        {"spec": {"agents": [{"name": "s", "algorithm": "sac"}]}},
        "spec.agents",
        "actionSpace continuous",
        "combination",
    ),
    (
        "rl-dqn-continuous",
        RL,
        {
            "spec": {
                "environment": {"actionSpace": "continuous"},
                "agents": [{"name": "d", "algorithm": "dqn"}],
            }
        },
        "spec.agents",
        "actionSpace discrete",
        "combination",
    ),
    (
        "tr-execution-same-bar",
        TR,
        {"spec": {"data": {"execution": "same_close"}}},
        "spec.data.execution",
        "'next_close' or 'next_open'",
        "enum",
    ),
    (
        "rl-eval-no-training-bars",
        RL,
        {"spec": {"eval": {"split": 0.45, "test": 0.45}}},
        "spec.eval",
        "split + test must leave at least 20%",
        "combination",
    ),
    (
        "rl-reweighting-majority",
        merge(
            RL,
            {
                "spec": {
                    "agents": [{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "ppo"}]
                }
            },
        ),
        {"spec": {"ensemble": {"method": "majority", "reweighting": {"frequency": 5}}}},
        "spec.ensemble.reweighting",
        "reweighting needs method weighted_average or combined",
        "combination",
    ),
    (
        "rl-agent-named-ensemble",
        RL,
        {"spec": {"agents": [{"name": "ensemble", "algorithm": "ppo"}]}},
        "spec.agents[0].name",
        "agent name 'ensemble' is taken",
        "name",
    ),
    (
        "tr-env-reserved-name",
        TR,
        {"spec": {"podTemplate": {"env": [{"name": "MASTER_ADDR", "value": "evil"}]}}},
        "spec.podTemplate.env[0].name",
        "name is set by the operator",
        "name",
    ),
    (
        "tr-pull-secret-bad-name",
        TR,
        {"spec": {"podTemplate": {"imagePullSecrets": [{"name": "Reg_Cred"}]}}},
        "spec.podTemplate.imagePullSecrets[0].name",
        "String should match pattern",
        "name",
    ),
    (
        "tr-pod-restart-policy",
        TR,
        {"spec": {"podTemplate": {"restartPolicy": "OnFailure"}}},
        "spec.podTemplate.restartPolicy",
        "restartPolicy is the operator's",
        "owned",
    ),
    (
        "tr-pod-containers",
        TR,
        {"spec": {"podTemplate": {"containers": [{"name": "trainer", "image": "mine"}]}}},
        "spec.podTemplate.containers",
        "containers is the operator's",
        "owned",
    ),
    (
        "tr-pod-init-container-trainer",
        TR,
        {"spec": {"podTemplate": {"initContainers": [{"name": "trainer", "image": "i"}]}}},
        "spec.podTemplate.initContainers",
        "trainer is the operator's",
        "owned",
    ),
    (
        "tr-pod-operator-volume",
        TR,
        {"spec": {"podTemplate": {"volumes": [{"name": "config", "emptyDir": {}}]}}},
        "spec.podTemplate.volumes",
        "one of the operator's volumes",
        "owned",
    ),
    (
        "tr-pod-operator-mount-path",
        TR,
        {
            "spec": {
                "podTemplate": {
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/var/tmp/tradewind"}],
                }
            }
        },
        "spec.podTemplate.volumeMounts",
        "one of the operator's paths",
        "owned",
    ),
    (
        "tr-accelerator-native-resource",
        TR,
        {"spec": {"accelerator": {"resource": "kubernetes.io/gpu"}}},
        "spec.accelerator.resource",
        "native resource",
        "name",
    ),
    (
        "rl-gang-queue-coscheduling",
        RL,
        {"spec": {"gangScheduling": {"scheduler": "coscheduling", "queue": "q"}}},
        "spec.gangScheduling.queue",
        "queue is a Volcano setting",
        "combination",
    ),
    (
        "tr-tracking-reserved-tag",
        TR,
        {"spec": {"tracking": {"tags": {"tradewind.name": "someone-else"}}}},
        "spec.tracking.tags",
        "are written by Tradewind and MLflow",
        "tags",
    ),
    (
        "rl-tracking-mlflow-parent-tag",
        RL,
        {"spec": {"tracking": {"tags": {"mlflow.parentRunId": "0123abcd"}}}},
        "spec.tracking.tags",
        "are written by Tradewind and MLflow",
        "tags",
    ),
    (
        "rl-ensemble-one-agent",
        RL,
        {"spec": {"ensemble": {"method": "majority"}}},
        "spec.ensemble",
        "at least two agents",
        "combination",
    ),
    (
        "rl-ensemble-method",
        RL,
        {
            "spec": {
                "agents": [{"name": "a", "algorithm": "ppo"}, {"name": "b", "algorithm": "a2c"}],
                "ensemble": {"method": "stacking"},
            }
        },
        "spec.ensemble.method",
        "'majority'",
        "enum",
    ),
    (
        "rl-reward-unknown",
        RL,
        {"spec": {"environment": {"reward": "calmar"}}},
        "spec.environment.reward",
        "'differential_sharpe'",
        "enum",
    ),
    (
        "rl-action-space-unknown",
        RL,
        {"spec": {"environment": {"actionSpace": "multi"}}},
        "spec.environment.actionSpace",
        "'discrete' or 'continuous'",
        "enum",
    ),
    (
        "rl-balance-zero",
        RL,
        {"spec": {"environment": {"initialBalance": 0}}},
        "spec.environment.initialBalance",
        "greater than 0",
        "range",
    ),
    (
        "rl-timesteps-zero",
        RL,
        {"spec": {"totalTimesteps": 0}},
        "spec.totalTimesteps",
        "greater than or equal to 1",
        "range",
    ),
    (
        "rl-eval-unknown",
        RL,
        {"spec": {"eval": {"every": 100}}},
        "spec.eval.every",
        "unknown field",
        "unknown",
    ),
    (
        "sw-missing-template",
        SW,
        {"spec": {"template": DELETE}},
        "spec.template",
        "required",
        "required",
    ),
    (
        "sw-template-kind",
        SW,
        {"spec": {"template": {"kind": "Job"}}},
        "spec.template",
        "'TrainingRun', 'RLRun'",
        "enum",
    ),
    (
        "sw-template-spec-invalid",
        SW,
        {"spec": {"template": {"spec": {"training": {"epochs": 0}}}}},
        "spec.template.spec.training.epochs",
        "greater than or equal to 1",
        "range",
    ),
    (
        "sw-no-objective",
        SW,
        {"spec": {"objective": DELETE}},
        "spec.objective",
        "exactly one of objective and objectives",
        "required",
    ),
    (
        "sw-objective-direction",
        SW,
        {"spec": {"objective": {"metric": "val_loss", "direction": "down"}}},
        "spec.objective.direction",
        "'minimize' or 'maximize'",
        "enum",
    ),
    (
        "sw-empty-search-space",
        SW,
        {"spec": {"searchSpace": {}}},
        "spec.searchSpace",
        "at least 1",
        "range",
    ),
    (
        "sw-path-not-in-template",
        SW,
        {
            "spec": {
                "searchSpace": {
                    "training.learningRate": {"type": "uniform", "low": 0.1, "high": 0.2}
                }
            }
        },
        "spec.searchSpace[training.learningRate]",
        "not a field",
        "path",
    ),
    (
        "sw-path-list-without-index",
        merge(
            SW,
            {
                "spec": {
                    "template": {
                        "kind": "RLRun",
                        "spec": Replace({"agents": [{"name": "p", "algorithm": "ppo"}]}),
                    }
                }
            },
        ),
        {
            "spec": {
                "searchSpace": Replace(
                    {"agents.hyperparameters.gamma": {"type": "uniform", "low": 0.9, "high": 0.99}}
                )
            }
        },
        "spec.searchSpace[agents.hyperparameters.gamma]",
        "is a list",
        "path",
    ),
    (
        "sw-param-type",
        SW,
        {"spec": {"searchSpace": {"model.dropout": {"type": "normal", "low": 0, "high": 0.5}}}},
        "spec.searchSpace[model.dropout].type",
        "'uniform'",
        "enum",
    ),
    (
        "sw-low-not-below-high",
        SW,
        {"spec": {"searchSpace": {"model.dropout": {"type": "uniform", "low": 0.5, "high": 0.1}}}},
        "spec.searchSpace[model.dropout].low",
        "less than high",
        "combination",
    ),
    (
        "sw-log-low-zero",
        SW,
        {
            "spec": {
                "searchSpace": {
                    "training.optimizer.learningRate": {"type": "loguniform", "low": 0, "high": 0.1}
                }
            }
        },
        "spec.searchSpace[training.optimizer.learningRate].low",
        "log scale needs low > 0",
        "combination",
    ),
    (
        "sw-step-with-log-scale",
        SW,
        {
            "spec": {
                "searchSpace": {
                    "training.batchSize": {
                        "type": "int",
                        "low": 16,
                        "high": 256,
                        "log": True,
                        "step": 16,
                    }
                }
            }
        },
        "spec.searchSpace[training.batchSize].step",
        "int without a log scale",
        "combination",
    ),
    (
        "sw-choice-empty",
        SW,
        {"spec": {"searchSpace": {"training.batchSize": {"type": "choice", "values": []}}}},
        "spec.searchSpace[training.batchSize].values",
        "at least 1 item",
        "combination",
    ),
    (
        "sw-uniform-missing-high",
        SW,
        {"spec": {"searchSpace": {"model.dropout": {"type": "uniform", "low": 0.1}}}},
        "spec.searchSpace[model.dropout]",
        "need low and high",
        "required",
    ),
    (
        "sw-value-rejected-by-template",
        SW,
        {"spec": {"searchSpace": {"model.dropout": {"type": "uniform", "low": 0.1, "high": 1.5}}}},
        "spec.searchSpace[model.dropout]",
        "template rejects",
        "range",
    ),
    (
        "sw-pruner-multi-objective",
        SW,
        {
            "spec": {
                "objective": DELETE,
                "objectives": [
                    {"metric": "val_loss"},
                    {"metric": "val_sharpe", "direction": "maximize"},
                ],
                "pruner": {"type": "median"},
            }
        },
        "spec.pruner.type",
        "cannot prune",
        "combination",
    ),
    (
        "sw-objective-on-test-data",
        SW,
        {"spec": {"objective": {"metric": "backtest_sharpe", "direction": "maximize"}}},
        "spec.objective.metric",
        "measured on the test data",
        "combination",
    ),
    (
        "sw-rl-objective-on-test-market",
        SW_RL,
        {"spec": {"objective": {"metric": "ppo_sharpe", "direction": "maximize"}}},
        "spec.objective.metric",
        "figure on the test market",
        "combination",
    ),
    (
        "sw-rl-objective-several-agents",
        SW_RL,
        {
            "spec": {
                "template": {
                    "spec": {
                        "agents": [
                            {"name": "ppo", "algorithm": "ppo"},
                            {"name": "a2c", "algorithm": "a2c"},
                        ]
                    }
                },
                "objective": {"metric": "eval_sharpe", "direction": "maximize"},
            }
        },
        "spec.objective.metric",
        "sweep a template with one agent",
        "combination",
    ),
    (
        "sw-pruner-unknown",
        SW,
        {"spec": {"pruner": {"type": "asha"}}},
        "spec.pruner.type",
        "'successive_halving'",
        "enum",
    ),
    ("sw-sampler-unknown", SW, {"spec": {"sampler": "bayes"}}, "spec.sampler", "'tpe'", "enum"),
    (
        "sw-grid-sampler-non-grid",
        SW,
        {"spec": {"sampler": "grid"}},
        "spec.sampler",
        "sampler grid needs every parameter of type grid",
        "combination",
    ),
    (
        "sw-parallelism-over-trials",
        SW,
        {"spec": {"maxTrials": 2, "parallelism": 4}},
        "spec.parallelism",
        "must not exceed maxTrials",
        "combination",
    ),
    (
        "sw-name-too-long",
        merge(SW, {"metadata": {"name": "s" * 59}}),
        {},
        "metadata.name",
        "at most 58",
        "name",
    ),
    (
        "tr-exit-code-permanent-and-retryable",
        TR,
        {"spec": {"failurePolicy": {"retryableExitCodes": [1, 65]}}},
        "spec.failurePolicy.retryableExitCodes",
        "cannot be both permanent and retryable",
        "combination",
    ),
    (
        "tr-clean-pod-policy",
        TR,
        {"spec": {"cleanPodPolicy": "Failed"}},
        "spec.cleanPodPolicy",
        "'None', 'Running' or 'All'",
        "enum",
    ),
    (
        "any-wrong-api-version",
        merge(TR, {"apiVersion": "tradewind.dev/v1"}),
        {},
        "apiVersion",
        "must be tradewind.dev/v1alpha1",
        "required",
    ),
    (
        "any-missing-name",
        merge(TR, {"metadata": {"labels": {"a": "b"}}}) | {"metadata": {"labels": {"a": "b"}}},
        {},
        "metadata.name",
        "required",
        "required",
    ),
]
OPERATOR_CHECKED = {
    "sw-path-list-without-index": "searchSpace paths are checked against the template's kind",
    "sw-path-not-in-template": "searchSpace paths are checked against the template's kind",
    "sw-template-spec-invalid": "template.spec is validated as the template's kind",
    "sw-rl-objective-on-test-market": "the template's agents are checked by the operator",
    "sw-rl-objective-several-agents": "the template's agents are checked by the operator",
    "sw-value-rejected-by-template": "searchSpace values are validated as the template's kind",
    "tr-model-params-builtin": "the apiserver's CEL cannot see inside the free-form params",
    "rl-environment-params-builtin": "the apiserver's CEL cannot see inside the free-form params",
}
names = set()
for name, base, patch, path, fragment, family in cases:
    assert name not in names, name
    names.add(name)
    doc = merge(base, patch)
    where = OPERATOR_CHECKED.get(name)
    header = f"# expect: {path}: {fragment}\n# family: {family}\n"
    if where:
        header += f"# apiserver: accepts; the operator rejects it ({where})\n"
    text = header + yaml.safe_dump(doc, sort_keys=False)
    (out / f"{name}.yaml").write_text(text)
print(len(cases))
