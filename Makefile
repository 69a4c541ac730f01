# medalist — a Kaggle classification competition from `make download` to `make submit`.
# Every arrow is a real file: make reruns only what changed. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules

# ---------------------------------------------------------------- knobs (make VAR=value)
COMP     ?= demo#            competition: configs/competitions/$(COMP).yaml
MODELS   ?=#                 runs to train / ensemble (configs/models/<m>.yaml, or <m>+pseudo etc. for one run on its own sources); default: PRESET's
PRESET   ?= good#            fast | good | best: MODELS by the competition's inputs and this machine (configs/presets.yaml; `make plan`)
BUDGET   ?=#                 e.g. 45m, 3h: `make all` picks what this machine trains in that time and ends on time (medalist/budget.py)
USE_GEN  ?= 0#               1: train on every generated source too (runs get a +gen suffix)
GEN      ?=#                 or some of them: e.g. aug,pseudo (of aug,llm,pseudo; runs get +aug+pseudo)
TTA      ?= 1#               1: the ensemble reads each run's tta/ (used only where it helps OOF)
FOLDS    ?=#                 e.g. 0,1: train these folds only, for a quick look (the run's files wait for all)
COMP_DIR ?=#                 a local folder holding the competition files
COMP_ZIP ?=#                 a local zip of the competition files
RUN      ?=#                 one run, for `make submission` / `make predict`; the teacher run(s), for `make pseudo`
MODEL    ?=#                 a pretraining config, for `make pretrain` (configs/pretrain/<m>.yaml)
CKPT     ?=#                 a checkpoint folder, for `make predict`
GPUS     ?=#                 e.g. 0,1: the GPUs fold jobs share out, one job each (default: every GPU)
FILE     ?=#                 a submission file, for `make submit` / `make score`
ANSWERS  ?=#                 an answers CSV (id,label), for `make score`
MESSAGE  ?=#                 a submission message, for `make submit`
TEST_DIR ?=#                 another test set in the competition's layout, for `make rerun`
BUNDLE_TORCH ?= 0#           1: `make bundle` packs torch and torchvision too (default: Kaggle's image has them)
LAUNCHER ?= local#           where fold jobs run: local, or ray (tasks on the Ray cluster at RAY_ADDRESS; make venv-ray)
RAY_ADDRESS ?=#              host:port of the Ray head, as `ray start --head` prints it, for LAUNCHER=ray
BENCH_COMP   ?= math-subjects#               `make bench`: its competition,
BENCH_DIR    ?= ../shared/competitions/math-subjects#  where its files are,
BENCH_MODELS ?= tfidf embed minilm-dapt minilm-dapt+pseudo#  the runs the quality part scores (the best CPU recipe),
BENCH_GEN    ?= 0#                           1: also augment and train every run again with USE_GEN=1,
BENCH_NEURAL ?= minilm-1ep#                  the config of the speed test and the Trainer reference,
BENCH_ARGS   ?=#                             e.g. --parts speed,growth  --quick  --skip-trainer-fit

# User values are text, never make or shell code: each is frozen as typed (`$(value)`: make
# expands no `$(…)` in it) and reaches programs as an environment variable ("$$FILE") or as a
# name checked against configs/, never pasted into a command line.
KNOBS := COMP MODELS PRESET BUDGET USE_GEN GEN TTA FOLDS COMP_DIR COMP_ZIP RUN MODEL CKPT GPUS FILE ANSWERS MESSAGE TEST_DIR \
  BUNDLE_TORCH LAUNCHER RAY_ADDRESS BENCH_COMP BENCH_DIR BENCH_MODELS BENCH_GEN BENCH_NEURAL BENCH_ARGS
$(foreach v,$(KNOBS),$(eval override $(v) := $$(value $(v))))
export MODELS_GIVEN := $(MODELS)#  for `make plan`: before PRESET fills MODELS in
export BUDGET COMP_DIR COMP_ZIP CKPT GPUS FILE ANSWERS MESSAGE TEST_DIR LAUNCHER RAY_ADDRESS BENCH_COMP BENCH_DIR BENCH_MODELS BENCH_NEURAL BENCH_ARGS
VENV := .venv
PY   := $(VENV)/bin/python
M    := src/medalist
ACCELERATE := $(VENV)/bin/accelerate launch --config_file accelerate_config.yaml
SLOT = $(PY) -m medalist.core.launch --gpus $(1) --#  a fold job: on its own GPU(s) (core/slots.py) or a Ray task (core/launch.py)
export PYTHONPATH := $(CURDIR)/src
export TOKENIZERS_PARALLELISM := false
export MEDALIST_MAKE_START ?= $(shell date +%s)#  the report's wall time and BUDGET's clock (kept by sub-makes)
MEDALIST_MAKE_START := $(MEDALIST_MAKE_START)

# ---------------------------------------------------------------- the plan (src/medalist/planner.py)
# Names are checked before they reach a rule: a competition, model or run is a config that exists.
eq        = $(and $(findstring $(1),$(2)),$(findstring $(2),$(1)))
is_config = $(and $(filter 1,$(words $(2))),$(call eq,$(wildcard $(1)/$(2).yaml),$(1)/$(2).yaml))
$(if $(call is_config,configs/competitions,$(COMP)),,$(error unknown competition '$(COMP)': no configs/competitions/$(COMP).yaml))
$(foreach v,USE_GEN TTA BENCH_GEN BUNDLE_TORCH,$(if $(filter-out 0 1,$($(v))),$(error $(v) must be 0 or 1, not '$($(v))')))
$(if $(filter-out 1,$(words $(LAUNCHER)))$(filter-out local ray,$(LAUNCHER)),$(error LAUNCHER must be local or ray, not '$(LAUNCHER)'))
$(if $(filter-out 1,$(words $(PRESET)))$(filter-out fast good best,$(PRESET)),$(error PRESET must be fast, good or best, not '$(PRESET)'))
comma := ,
empty :=
space := $(empty) $(empty)
$(if $(filter-out aug llm pseudo,$(subst $(comma), ,$(GEN))),$(error GEN must list generated sources of aug,llm,pseudo (comma-separated), not '$(GEN)'))
$(if $(and $(filter 1,$(USE_GEN)),$(GEN)),$(error give USE_GEN=1 (every generated source) or GEN=… (some of them), not both))
PLAN := .make/plan/$(COMP).mk#  paths, runs, rules and sources; one Python start-up when a config or a source changes
ifneq ($(filter-out help venv venv-ray test test-all clean tensorboard,$(or $(MAKECMDGOALS),help)),)
include $(PLAN)
endif
$(PLAN): $(wildcard configs/models/*.yaml configs/pretrain/*.yaml) configs/competitions/$(COMP).yaml configs/presets.yaml configs/models \
  $(wildcard configs/pretrain) $(wildcard $(M)/*.py $(M)/*/*.py $(M)/*/*/*.py) | $(VENV)/.installed
	$(PY) -m medalist.planner $(COMP) $@
$(STAMPS)/%.json: | $(VENV)/.installed
	@test -e $@ || $(PY) -m medalist.planner $(COMP) $(PLAN)

$(if $(MODELS),,$(if $(PRESET_ERROR.$(PRESET)),$(error $(PRESET_ERROR.$(PRESET)))))
override MODELS := $(or $(MODELS),$(PRESET_MODELS.$(PRESET)))
GEN_SFX   := $(if $(filter 1,$(USE_GEN)),+gen,$(subst $(space),,$(addprefix +,$(filter $(subst $(comma), ,$(GEN)),aug llm pseudo))))
RUNS      := $(foreach m,$(MODELS),$(if $(findstring +,$(m)),$(m),$(m)$(GEN_SFX)))
base       = $(firstword $(subst +, ,$(1)))
bad_run    = unknown run '$(1)': no configs/models/$(call base,$(1)).yaml, or a suffix other than +gen or some of +aug +llm +pseudo$(comma) each once and in this order
run_error  = $(or $(MODEL_ERROR.$(call base,$(1))),$(if $(or $(2),$(call is_config,configs/models,$(call base,$(1)))),$(call bad_run,$(1)),unknown model '$(1)': no configs/models/$(call base,$(1)).yaml))
valid_run  = $(and $(filter 1,$(words $(1))),$(call eq,$(filter $(1),$(KNOWN_RUNS)),$(1)))
stale      = $(and $(call is_config,configs/models,$(call base,$(1))),$(if $(filter $(call base,$(1)),$(KNOWN_MODELS))$(MODEL_ERROR.$(call base,$(1))),,new))
check_runs = $(foreach r,$(1),$(if $(or $(call valid_run,$(r)),$(call stale,$(r))),,$(error $(call run_error,$(r),$(2)))))
$(if $(PLAN_LOADED),$(call check_runs,$(RUNS)))
FOLD_LIST := $(subst $(comma), ,$(FOLDS))
$(if $(and $(FOLD_IDS),$(FOLDS)),$(if $(or $(filter-out $(FOLD_IDS),$(FOLD_LIST)),$(if $(FOLD_LIST),,none)),\
  $(error FOLDS must list folds of $(COMP) ($(subst $(space),$(comma),$(FOLD_IDS))), comma-separated, not '$(FOLDS)')))
RUN_FILES := $(RUNS:%=$(R)/%/metrics.json)
TTA_FILES := $(RUNS:%=$(R)/%/tta/metrics.json)
# which runs the ensemble, leaderboard and report read: a stamp named by them, so another MODELS
# (or TTA) remakes those three and the same one again does nothing
RUNS_STAMP := .make/runs/$(COMP)/$(subst $(space),/,$(RUNS))/tta$(TTA)
$(RUNS_STAMP):
	rm -rf .make/runs/$(COMP) && mkdir -p $(@D) && touch $@

.DEFAULT_GOAL := help
.PHONY: FORCE help plan all venv venv-ray download check folds baseline train augment generate pseudo pretrain tta evaluate \
        ensemble report submission predict bundle rerun score submit status tensorboard test test-all bench clean
plan: | $(VENV)/.installed ## what PRESET (and each preset) resolves to for COMP on this machine, and why
	$(PY) -m medalist.presets --comp $(COMP) --preset $(PRESET) --models "$$MODELS_GIVEN"
help: ## list every target
	@echo "usage: make <target> [COMP=demo] [MODELS=\"tfidf embed minilm\" (default: the competition's default_models)] [USE_GEN=0|1 | GEN=aug,llm,pseudo] …"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
$(if $(and $(BUDGET),$(filter-out all,$(MAKECMDGOALS))),$(error BUDGET=… is for `make all` only))
all: $(if $(BUDGET),| $(VENV)/.installed,$(RAW) $(CHECKS) $(PROC) $(RUN_FILES) $(LEADERBOARD) $(ENSEMBLE) $(REPORT)) ## download, check, folds, train MODELS, evaluate, ensemble, report [BUDGET=45m: what fits, on time]
	$(if $(BUDGET),$(PY) -m medalist.budget --comp $(COMP) --budget "$$BUDGET" --preset $(PRESET) --models "$$MODELS_GIVEN" --suffix "$(GEN_SFX)" --tta $(TTA))
venv: $(VENV)/.installed ## create .venv from requirements.txt
$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -r requirements.txt
	$(PY) $(M)/core/torch_pair.py
	touch $@
venv-ray: | $(VENV)/.installed ## add Ray to .venv (requirements-ray.txt), for LAUNCHER=ray: on every machine of the cluster
	$(PY) -m pip install -q -r requirements-ray.txt

# ---------------------------------------------------------------- data and synthetic data
download: $(RAW) ## fetch the competition files (Kaggle, or COMP_DIR / COMP_ZIP, or the built-in demo)
.PRECIOUS: $(RAW)#  written atomically by the stage, which compares a named COMP_DIR/COMP_ZIP each time
$(RAW): $(if $(COMP_DIR)$(COMP_ZIP),FORCE) | $(VENV)/.installed
	$(PY) -m medalist.stages.download --comp $(COMP) --dir "$$COMP_DIR" --zip "$$COMP_ZIP"
check: $(CHECKS) ## audit train/test: duplicates, HTML, LaTeX, links, lengths, tokens; images: unreadable, sizes, pHash duplicates, samples; adversarial AUC
$(CHECKS): $(RAW) $(STAMPS)/data.json $(SRC.checks) | $(VENV)/.installed
	$(PY) -m medalist.stages.checks --comp $(COMP)
folds: $(PROC) ## clean text once; stratified k folds grouped by (near-)duplicates
$(PROC): $(RAW) $(STAMPS)/data.json $(SRC.folds) | $(VENV)/.installed
	$(PY) -m medalist.stages.folds --comp $(COMP)
augment: data/generated/$(COMP)/aug.csv ## nlpaug copies of rare-class rows, math protected
data/generated/$(COMP)/aug.csv: $(PROC) configs/augment.yaml $(SRC.augment) | $(VENV)/.installed
	$(PY) -m medalist.stages.augment --comp $(COMP)
generate: data/generated/$(COMP)/llm.csv ## LLM-written problems via an OpenAI-compatible server (OPENAI_BASE_URL)
data/generated/$(COMP)/llm.csv: $(PROC) configs/generate.yaml $(SRC.generate) $(R)/tfidf/metrics.json | $(VENV)/.installed
	$(PY) -m medalist.stages.generate --comp $(COMP)
# Pseudo-labels (fold k's from the teacher's fold-k models): the teacher is RUN, or `teacher:` in
# configs/pseudo.yaml (which make cannot see: then the stage always runs). A run on pseudo-labels
# (minilm+pseudo) with no pseudo.csv yet is taught by the plain runs of MODELS.
STUDENTS := $(strip $(foreach m,$(MODELS),$(if $(findstring +pseudo,$(m)),$(m))))#  own suffix only (not GEN=pseudo)
TEACHERS := $(strip $(if $(filter pseudo $(PSEUDO),$(MAKECMDGOALS)),$(RUN),$(if $(and $(STUDENTS),$(if $(wildcard $(PSEUDO)),,no)),\
  $(or $(strip $(foreach r,$(RUNS),$(if $(findstring +,$(r)),,$(r)))),$(error $(firstword $(STUDENTS)) trains on pseudo-labels but \
  $(PSEUDO) does not exist and MODELS has no plain run to teach it: add one (MODELS="tfidf $(firstword $(STUDENTS))") or run `make pseudo COMP=$(COMP) RUN=<run>` first)))))
$(if $(filter pseudo $(PSEUDO),$(MAKECMDGOALS)),$(call check_runs,$(RUN),run))
TEACHER_STAMP := .make/pseudo/$(COMP)/$(subst $(space),/,$(TEACHERS))/teacher
$(TEACHER_STAMP):
	rm -rf .make/pseudo/$(COMP) && mkdir -p $(@D) && touch $@
$(GEN_TRAIN): $(if $(TEACHERS),$(PSEUDO))
	@test -e $@ || { echo "error: $(or $(filter %+gen %+aug %+llm %+pseudo,$(RUNS)),a run on generated rows) trains on generated rows but $@ does not exist: run \`make augment COMP=$(COMP)\`, \`make generate COMP=$(COMP)\` or \`make pseudo COMP=$(COMP) RUN=<run>\` first" >&2; exit 2; }
pseudo: $(PSEUDO) ## RUN="<run> …": the teacher's confident test predictions, fold by fold → pseudo.csv (train with GEN=pseudo)
$(PSEUDO): $(TEACHER_STAMP) $(TEACHERS:%=$(R)/%/metrics.json) $(if $(TEACHERS),,FORCE) $(PROC) configs/pseudo.yaml \
  $(STAMPS)/data.json $(SRC.pseudo) | $(VENV)/.installed
	$(PY) -m medalist.stages.pseudo --comp $(COMP) --runs "$(TEACHERS)"

# ---------------------------------------------------------------- training and inference
pretrain: $(if $(call is_config,configs/pretrain,$(MODEL)),$(R)/pretrain/$(MODEL)/done.json,FORCE) ## MODEL=<config>: continue a text backbone as a masked LM on COMP's texts → results/<comp>/pretrain/<config>/
	$(if $(call is_config,configs/pretrain,$(MODEL)),,$(error $(if $(MODEL),unknown pretraining config '$(MODEL)': no configs/pretrain/$(MODEL).yaml,pretrain needs MODEL=<config>, e.g. make pretrain MODEL=minilm (configs/pretrain/<config>.yaml))))
baseline: $(R)/tfidf$(GEN_SFX)/metrics.json ## = make train MODELS=tfidf
train: $(if $(FOLDS),$(foreach r,$(RUNS),$(FOLD_LIST:%=$(R)/$(r)/fold%/done.json)),$(RUN_FILES)) ## train every run in MODELS, k folds each (neural ones under accelerate launch)
check_run = $(if $(RUN),$(if $(call valid_run,$(RUN)),,$(error $(call run_error,$(RUN),run))),$(error $(1) needs RUN=<run>, e.g. make $(1) RUN=tfidf))
predict: | $(VENV)/.installed ## RUN=<run> [CKPT=dir]: test probabilities from saved weights → submission/<comp>/<run>.csv
	$(call check_run,predict)$(PY) -m medalist.stages.predict --comp $(COMP) --run $(RUN) $(if $(CKPT),--ckpt "$$CKPT")
tensorboard: ## serve logs/<comp>/ (loss, learning rate, metric, throughput per fold)
	$(VENV)/bin/tensorboard --logdir logs/$(COMP) --host 127.0.0.1

# ---------------------------------------------------------------- evaluation and ensembling
tta: $(TTA_FILES) ## test-time augmentation views per run (used only where OOF improves)
evaluate: $(LEADERBOARD) ## confusion matrices, per-class scores, leaderboard.md of the runs in MODELS
$(LEADERBOARD): $(RUN_FILES) $(RUNS_STAMP) $(PROC) $(SRC.evaluate) | $(VENV)/.installed
	$(PY) -m medalist.stages.evaluate --comp $(COMP) --runs "$(RUNS)"
ensemble: $(ENSEMBLE) ## OOF-fitted ensemble (method by nested CV) → submission/<comp>/submission.csv
$(ENSEMBLE): $(if $(filter 1,$(TTA)),$(TTA_FILES),$(RUN_FILES)) $(RUNS_STAMP) $(PROC) configs/ensemble.yaml $(SRC.ensemble) | $(VENV)/.installed
	$(PY) -m medalist.stages.ensemble --comp $(COMP) --runs "$(RUNS)" $(if $(filter 1,$(TTA)),--tta)
$(REPORT): $(ENSEMBLE) $(LEADERBOARD) $(CHECKS) $(SRC.report) $(wildcard $(R)/budget.json) | $(VENV)/.installed
	$(PY) -m medalist.stages.report --comp $(COMP) --runs "$(RUNS)"
report: $(ENSEMBLE) $(LEADERBOARD) $(CHECKS) | $(VENV)/.installed ## rebuild results/<comp>/report.html (+ report.md)
	$(PY) -m medalist.stages.report --comp $(COMP) --runs "$(RUNS)"

# ---------------------------------------------------------------- submissions
submission: $(if $(call valid_run,$(RUN)),submission/$(COMP)/$(RUN).csv) ## RUN=<run>: a validated submission/<comp>/<run>.csv from one run's test.csv
	$(call check_run,submission)
submission/$(COMP)/%.csv: $(R)/%/metrics.json $(SRC.submission) | $(VENV)/.installed
	$(PY) -m medalist.stages.submission --comp $(COMP) --run $*
bundle: $(BUNDLE) ## code competitions: the ensemble, its wheels and an offline kernel → submission/<comp>/bundle/
$(BUNDLE): $(ENSEMBLE) configs/competitions/$(COMP).yaml requirements.txt pyproject.toml $(SRC.bundle) $(if $(filter 1,$(BUNDLE_TORCH)),FORCE) | $(VENV)/.installed
	$(PY) -m medalist.stages.bundle --comp $(COMP) $(if $(filter 1,$(BUNDLE_TORCH)),--torch)
rerun: $(BUNDLE) | $(VENV)/.installed ## [TEST_DIR=dir]: the bundle's kernel in a fresh venv, network off → submission/<comp>/rerun.csv
	$(PY) -m medalist.stages.rerun --comp $(COMP) --test-dir "$$TEST_DIR"
score: | $(VENV)/.installed ## FILE=sub.csv ANSWERS=answers.csv: score a submission with the competition's metric
	$(if $(and $(FILE),$(ANSWERS)),,$(error score needs FILE=<submission.csv> ANSWERS=<answers.csv>))
	$(PY) -m medalist.stages.score --comp $(COMP) --file "$$FILE" --answers "$$ANSWERS"
submit: | $(VENV)/.installed ## upload FILE (default: the ensemble's submission), or a code competition's bundle, to Kaggle; never automatic
	$(PY) -m medalist.stages.submit --comp $(COMP) --file "$$FILE" --message "$$MESSAGE"
status: | $(VENV)/.installed ## poll Kaggle for the public scores of past submissions into the ledger
	$(PY) -m medalist.stages.submit --comp $(COMP) --status

# ---------------------------------------------------------------- benchmark and project
# The bench's runs are ordinary targets in results/$(BENCH_COMP)/ (a rerun reuses them); the plain
# `all` goes first and, after a USE_GEN=1 pass, once more, so the ensemble ends as the plain one.
BENCH_ALL = $(MAKE) --no-print-directory all COMP="$$BENCH_COMP" COMP_DIR="$$BENCH_DIR" MODELS="$$BENCH_MODELS"
bench: | $(VENV)/.installed ## score, speed, memory, growth against plain references → BENCHMARKS.md
	$(BENCH_ALL)
	$(if $(filter 1,$(BENCH_GEN)),$(MAKE) --no-print-directory augment COMP="$$BENCH_COMP" COMP_DIR="$$BENCH_DIR" MODELS="$$BENCH_MODELS" && $(BENCH_ALL) USE_GEN=1 && $(BENCH_ALL))
	$(PY) bench/run_bench.py --comp "$$BENCH_COMP" --comp-dir "$$BENCH_DIR" --runs "$$BENCH_MODELS" --model "$$BENCH_NEURAL" $$BENCH_ARGS
test: | $(VENV)/.installed ## the fast offline tests, after every change (pipeline, kill-and-resume and bench runs left out)
	$(PY) -m pytest -q -m "not slow" tests
test-all: | $(VENV)/.installed ## every offline test, slow ones included (what CI runs)
	$(PY) -m pytest -q tests
clean: ## remove everything generated for COMP (keeps data/raw, the LLM cache, the submission ledger, .venv)
	rm -rf data/processed/$(COMP) results/$(COMP) logs/$(COMP) images/$(COMP) .make/runs/$(COMP)
	rm -f data/generated/$(COMP)/{aug,llm,pseudo,generated_train}.csv submission/$(COMP)/*.json
	@if [ -d submission/$(COMP)/bundle ]; then rm -rf submission/$(COMP)/bundle submission/$(COMP)/.rerun; \
	  echo "removed submission/$(COMP)/bundle (make bundle rebuilds it; datasets and kernels already on Kaggle stay there)"; fi
	find submission/$(COMP) -name '*.csv' ! -name ledger.csv -delete 2>/dev/null || true
	@echo "kept data/raw/$(COMP): rm -rf data/raw/$(COMP) to download it again"
FORCE:
