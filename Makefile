# mlx-align: `make capstone` runs the whole pipeline on the embedded default
# data; `make test` runs the suite. Both create .venv first when it is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Plain `mlx` has no backend on Linux: take the CPU one there (cuda13 on NVIDIA:
# `make EXTRAS=cuda13,dev`). On macOS plain mlx uses Metal.
ifeq ($(shell uname -s),Linux)
EXTRAS ?= cpu,dev
else
EXTRAS ?= dev
endif

# Debian's OpenBLAS runs the CPU backend's matmuls ~15x faster than the
# reference BLAS in the mlx-cpu wheel (see README). The mlx-align command
# preloads it itself; the test runner and mlx_lm calls get it from here.
OPENBLAS := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0))
ifneq ($(OPENBLAS),)
ifeq ($(MLX_ALIGN_NO_OPENBLAS),)
export LD_PRELOAD := $(OPENBLAS)$(if $(LD_PRELOAD), $(LD_PRELOAD))
endif
endif

# The capstone: sizes that finish in minutes on a laptop CPU.
OUT          ?= runs/capstone
PRESET       ?= small
PT_STEPS     ?= 1000
SFT_STEPS    ?= 200
DPO_STEPS    ?= 150
GRPO_STEPS   ?= 60
SEED         ?= 0
ALIGN        := $(BIN)/mlx-align
PROMPT       := Question: What is 12 + 7?\nAnswer:

.PHONY: venv test lint bench capstone capstone-orpo capstone-kto clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	touch $@

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check mlx_align tests bench recipes
	$(BIN)/ruff format --check mlx_align tests bench recipes

bench: venv
	$(BIN)/python bench/sft.py

# --- the capstone pipeline, stage by stage ------------------------------------

# 1. Deterministic embedded data: arithmetic with worked answers + short facts.
$(OUT)/data/.done: recipes/make_data.py | venv
	$(BIN)/python recipes/make_data.py --out $(OUT)/data --seed $(SEED)
	touch $@

# 2. A llama-style model and a BPE tokenizer trained on the corpus, offline.
$(OUT)/base/config.json: $(OUT)/data/.done
	$(ALIGN) init-model --preset $(PRESET) --corpus $(OUT)/data/pretrain --out $(OUT)/base --seed $(SEED)

# 3. Pretrain every weight on the text corpus.
$(OUT)/pt/model/config.json: $(OUT)/base/config.json
	$(ALIGN) pretrain --model $(OUT)/base --data $(OUT)/data/pretrain --out $(OUT)/pt \
		--steps $(PT_STEPS) --batch-size 16 --learning-rate 2e-3 --warmup-steps 50 \
		--max-length 128 --eval-every 250 --save-every 250 --seed $(SEED)

# 4. LoRA SFT on question -> worked answer.
$(OUT)/sft/adapters.safetensors: $(OUT)/pt/model/config.json
	$(ALIGN) sft --model $(OUT)/pt/model --data $(OUT)/data/sft --out $(OUT)/sft \
		--steps $(SFT_STEPS) --batch-size 16 --learning-rate 1e-3 --lora-rank 16 --lora-alpha 32 \
		--max-length 128 --eval-every 100 --save-every 100 --seed $(SEED)

# 5. Fuse the adapters into a standalone mlx-lm model.
$(OUT)/sft-fused/config.json: $(OUT)/sft/adapters.safetensors
	$(ALIGN) fuse --model $(OUT)/pt/model --adapter-path $(OUT)/sft --save-path $(OUT)/sft-fused

# 6. A Bradley-Terry reward model (LoRA backbone + scalar head) on the same
#    pairs; prints its held-out accuracy. `mlx-align score` ranks with it.
$(OUT)/rm/reward_head.safetensors: $(OUT)/sft-fused/config.json
	$(ALIGN) reward --model $(OUT)/sft-fused --data $(OUT)/data/preference --out $(OUT)/rm \
		--steps $(DPO_STEPS) --batch-size 8 --learning-rate 5e-4 --lora-rank 16 --lora-alpha 32 \
		--max-length 128 --eval-every 50 --eval-batches -1 --save-every 50 --seed $(SEED)
	$(BIN)/python recipes/last_metric.py $(OUT)/rm val_accuracy

# 7. DPO on correct vs wrong worked answers; LoRA on the fused SFT model, the
#    reference is the same weights with the adapters off (cached log-probs).
$(OUT)/dpo/adapters.safetensors: $(OUT)/rm/reward_head.safetensors
	$(ALIGN) dpo --model $(OUT)/sft-fused --data $(OUT)/data/preference --out $(OUT)/dpo \
		--steps $(DPO_STEPS) --batch-size 8 --learning-rate 5e-4 --beta 0.1 --lora-rank 16 --lora-alpha 32 \
		--max-length 128 --eval-every 50 --eval-batches -1 --save-every 50 --seed $(SEED)
	$(BIN)/python recipes/last_metric.py $(OUT)/dpo val_rewards/accuracies val_loss

$(OUT)/dpo-fused/config.json: $(OUT)/dpo/adapters.safetensors
	$(ALIGN) fuse --model $(OUT)/sft-fused --adapter-path $(OUT)/dpo --save-path $(OUT)/dpo-fused

# 8. GRPO with the math + format rewards on held-in problems; held-out
#    accuracy (greedy) before and after.
$(OUT)/grpo/adapters.safetensors: $(OUT)/dpo-fused/config.json
	$(ALIGN) eval-math --model $(OUT)/dpo-fused --data $(OUT)/data/grpo --split test \
		--out $(OUT)/eval-before-grpo.jsonl
	$(ALIGN) grpo --model $(OUT)/dpo-fused --data $(OUT)/data/grpo --out $(OUT)/grpo \
		--reward math --reward format --reward-weights 1.0,0.1 --steps $(GRPO_STEPS) \
		--batch-size 2 --group-size 8 --max-completion-tokens 32 --temperature 1.0 \
		--learning-rate 2e-4 --lora-rank 16 --lora-alpha 32 --max-length 128 \
		--log-every 5 --save-every 25 --seed $(SEED)

$(OUT)/grpo-fused/config.json: $(OUT)/grpo/adapters.safetensors
	$(ALIGN) fuse --model $(OUT)/dpo-fused --adapter-path $(OUT)/grpo --save-path $(OUT)/grpo-fused
	$(ALIGN) eval-math --model $(OUT)/grpo-fused --data $(OUT)/data/grpo --split test \
		--out $(OUT)/eval-after-grpo.jsonl

# 9. mlx-lm serves the result unchanged.
capstone: $(OUT)/grpo-fused/config.json
	$(BIN)/python -m mlx_lm generate --model $(OUT)/grpo-fused --ignore-chat-template \
		--prompt "$$(printf '$(PROMPT)')" --max-tokens 32 --temp 0

# ORPO and KTO on the same data, from the SFT model (not part of `capstone`).
capstone-orpo: $(OUT)/sft-fused/config.json
	$(ALIGN) orpo --model $(OUT)/sft-fused --data $(OUT)/data/preference --out $(OUT)/orpo \
		--steps $(DPO_STEPS) --batch-size 8 --learning-rate 5e-4 --beta 0.1 --max-length 128 \
		--eval-every 50 --eval-batches -1 --seed $(SEED)
	$(BIN)/python recipes/last_metric.py $(OUT)/orpo val_rewards/accuracies val_loss

capstone-kto: $(OUT)/sft-fused/config.json
	$(ALIGN) kto --model $(OUT)/sft-fused --data $(OUT)/data/kto --out $(OUT)/kto \
		--steps $(DPO_STEPS) --batch-size 8 --learning-rate 5e-4 --beta 0.1 --max-length 128 \
		--eval-every 50 --eval-batches -1 --seed $(SEED)
	$(BIN)/python recipes/last_metric.py $(OUT)/kto val_loss

clean:
	rm -rf runs/capstone
