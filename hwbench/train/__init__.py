"""Co-training runs, by stage: ``config`` (what a run is, checked before any work), ``run`` (what a
launch sets up: process group, checkpoint, data, model), ``precision`` (autocast, compile),
``schedule`` (learning rate, gate noise, the epochs a time budget fits), ``evaluation`` (kNN of
both streams, warnings), ``loop`` (``train``: the epochs, checkpoints, the learned pattern). Every
name is imported from ``hwbench.train``; ``hwbench.train.loop``'s docstring says what a run
writes."""

from hwbench.train.config import (  # noqa: F401
    AMP_MODES,
    CHECKPOINT,
    ENERGY,
    FINETUNE_SHARE,
    GATE_BIAS,
    GATE_NOISE_ANNEAL,
    LATENCY_DEFAULTS,
    PAPER_DEFAULTS,
    RESUME_DEFAULTS,
    RESUME_HINTS,
    RESUME_KEYS,
    SCHEDULES,
    TrainConfig,
    budget_defaults,
    latency_budget,
    resolve_net,
    run_dir,
    validate,
)
from hwbench.train.evaluation import (  # noqa: F401
    eval_macs_ratio,
    evaluate,
    feature_warnings,
    features,
    param_divergence,
    streams_of,
    top1_se,
    write_metrics_csv,
)
from hwbench.train.loop import (  # noqa: F401
    set_warmup,
    train,
)
from hwbench.train.precision import (  # noqa: F401
    BF16_CPU_FLAGS,
    COMPILE_BACKEND,
    amp_choice,
    amp_dtype,
    check_compile,
    cpu_bf16_native,
)
from hwbench.train.run import (  # noqa: F401
    Dist,
    TrainingRun,
    load_data,
    open_checkpoint,
    resume_state,
    setup,
)
from hwbench.train.schedule import (  # noqa: F401
    BUDGET_MARGIN,
    BUDGET_MAX_EPOCHS,
    END_SHARE,
    END_TERMS,
    PAPER_LR,
    READ_EVERY,
    SHORT_RUN_LR,
    SHORT_RUN_STEPS,
    choose_lr,
    end_steps,
    lr_at,
    noise_at,
    plan_epochs,
    read_every,
    seed_everything,
)
