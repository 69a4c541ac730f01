# medalist — a Kaggle classification competition from `make download` to `make submit`.
# Every arrow is a real file: make reruns only what changed. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules

# ---------------------------------------------------------------- knobs (make VAR=value)
COMP     ?= demo#            competition: configs/competitions/$(COMP).yaml
MODELS   ?=#                 runs to train / ensemble (configs/models/<m>.yaml, or <m>+pseudo etc. for one run on its own sources); default: the competition's default_models
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
# name checked against configs/, never pasted into a command line. So quotes, `$(…)`,
# backticks, spaces and newlines in a path or a message run nothing and arrive unchanged.
$(foreach v,COMP MODELS USE_GEN GEN TTA FOLDS COMP_DIR COMP_ZIP RUN MODEL CKPT GPUS FILE ANSWERS MESSAGE TEST_DIR BUNDLE_TORCH \
  LAUNCHER RAY_ADDRESS BENCH_COMP BENCH_DIR BENCH_MODELS BENCH_GEN BENCH_NEURAL BENCH_ARGS,$(eval override $(v) := $$(value $(v))))
export COMP_DIR COMP_ZIP CKPT GPUS FILE ANSWERS MESSAGE TEST_DIR LAUNCHER RAY_ADDRESS BENCH_COMP BENCH_DIR BENCH_MODELS BENCH_NEURAL BENCH_ARGS

VENV       := .venv
PY         := $(VENV)/bin/python
ACCELERATE := $(VENV)/bin/accelerate launch --config_file accelerate_config.yaml
export PYTHONPATH := $(CURDIR)/src
export TOKENIZERS_PARALLELISM := false
# once per make invocation (simply expanded): the report's summary ends on this make's wall time
export MEDALIST_MAKE_START := $(shell date +%s)

# $(call is_config,DIR,NAME): non-empty when NAME is one word and DIR/NAME.yaml exists as spelled
# (no glob, no second word), so a checked name is safe to write into a command line
eq        = $(and $(findstring $(1),$(2)),$(findstring $(2),$(1)))
is_config = $(and $(filter 1,$(words $(2))),$(call eq,$(wildcard $(1)/$(2).yaml),$(1)/$(2).yaml))
$(if $(call is_config,configs/competitions,$(COMP)),,$(error unknown competition '$(COMP)': no configs/competitions/$(COMP).yaml))
$(if $(filter-out 0 1,$(USE_GEN)),$(error USE_GEN must be 0 or 1, not '$(USE_GEN)'))
$(if $(filter-out 0 1,$(BENCH_GEN)),$(error BENCH_GEN must be 0 or 1, not '$(BENCH_GEN)'))
$(if $(filter-out 0 1,$(BUNDLE_TORCH)),$(error BUNDLE_TORCH must be 0 or 1, not '$(BUNDLE_TORCH)'))
$(if $(filter-out 1,$(words $(LAUNCHER)))$(filter-out local ray,$(LAUNCHER)),$(error LAUNCHER must be local or ray, not '$(LAUNCHER)'))
comma := ,
empty :=
space := $(empty) $(empty)
$(if $(filter-out aug llm pseudo,$(subst $(comma), ,$(GEN))),$(error GEN must list generated sources of aug,llm,pseudo (comma-separated), not '$(GEN)'))
$(if $(and $(filter 1,$(USE_GEN)),$(GEN)),$(error give USE_GEN=1 (every generated source) or GEN=… (some of them), not both))
GEN_LIST := $(filter $(subst $(comma), ,$(GEN)),aug llm pseudo)#  checked above; in this order, each once
$(if $(filter-out 0 1,$(TTA)),$(error TTA must be 0 or 1, not '$(TTA)'))
# `make submission` / `make predict` / `make pseudo`: a run is a model config's name, plus +gen
# (USE_GEN=1) or the sources GEN named (+aug+pseudo)
run_model = $(firstword $(subst +, ,$(1)))
run_srcs  = $(wordlist 2,99,$(subst +, ,$(1)))
good_srcs = $(or $(call eq,gen,$(1)),$(call eq,$(1),$(filter $(1),aug llm pseudo)),$(if $(1),,ok))#  one order: one name per run
is_run    = $(and $(filter 1,$(words $(1))),$(call is_config,configs/models,$(call run_model,$(1))),$(call good_srcs,$(call run_srcs,$(1))))
bad_run   = $(error unknown run '$(1)': no configs/models/$(call run_model,$(1)).yaml, or a suffix other than +gen or some of +aug +llm +pseudo, each once and in this order)
check_run = $(if $(RUN),,$(error $(1) needs RUN=<run>, e.g. make $(1) RUN=tfidf))$(if $(call is_run,$(RUN)),,$(call bad_run,$(RUN)))

# How a model trains (in-process or under accelerate), which source files its runs depend on,
# and each competition's default MODELS come from medalist (the family table in
# medalist.models.registry, the competition configs) through one generated include: one Python
# start-up when a config or the table changes, none on an up-to-date `make`. Goals that build no
# run skip it, so `make help` needs no venv.
M             := src/medalist
MODELS_MK     := .make/models.mk
MODEL_CONFIGS := $(wildcard configs/models/*.yaml)
COMP_CONFIGS  := $(wildcard configs/competitions/*.yaml)
ifneq ($(filter-out help venv download pretrain baseline submission predict score submit \
                    status tensorboard bench test test-all clean,$(or $(MAKECMDGOALS),help)),)
include $(MODELS_MK)
$(if $(MODELS),,$(eval override MODELS := $(COMP_MODELS.$(COMP))))
$(foreach m,$(MODELS),$(if $(MODEL_ERROR.$(call run_model,$(m))),$(error $(MODEL_ERROR.$(call run_model,$(m))))))
endif
$(foreach m,$(MODELS),$(if $(call is_config,configs/models,$(call run_model,$(m))),,$(error unknown model '$(m)': no configs/models/$(call run_model,$(m)).yaml))$(if \
  $(call is_run,$(m)),,$(call bad_run,$(m))))
# The registry also writes $(STAMPS)/: data.json (the competition config less model_overrides and
# default_models: what checks, folds and pseudo-labels depend on) and override.<model>.json (what
# that model's runs depend on), each touched only when its content changes. A stamp is remade here
# only when missing; a config edit reaches it through the include above.
STAMPS        := .make/stamps/$(COMP)
$(STAMPS)/%.json: | $(VENV)/.installed
	@test -e $@ || $(PY) -m medalist.models.registry $(MODELS_MK) $(MODEL_CONFIGS) $(COMP_CONFIGS) && test -e $@
# the folders too: adding or renaming a config changes their time, not the config's; and every
# source file, since a run's prerequisites are what its family imports (a new import is a new one)
$(MODELS_MK): $(MODEL_CONFIGS) $(COMP_CONFIGS) configs/models configs/competitions $(wildcard configs/pretrain) \
              $(wildcard $(M)/*.py $(M)/*/*.py $(M)/*/*/*.py) | $(VENV)/.installed
	$(PY) -m medalist.models.registry $@ $(MODEL_CONFIGS) $(COMP_CONFIGS)

# A MODELS entry with a suffix of its own (minilm+pseudo) keeps it: one make can ensemble a run on
# pseudo-labels beside plain ones. The others get USE_GEN's / GEN's suffix.
GEN_SUFFIX := $(if $(filter 1,$(USE_GEN)),+gen,$(subst $(space),,$(addprefix +,$(GEN_LIST))))
run_suffix = $(patsubst $(call run_model,$(1))%,%,$(1))
gen_args   = $(if $(filter +gen,$(1)),--use-gen,$(if $(1),--gen $(subst $(space),$(comma),$(wordlist 1,9,$(subst +, ,$(1))))))
RUNS       := $(foreach m,$(MODELS),$(if $(findstring +,$(m)),$(m),$(m)$(GEN_SUFFIX)))
R          := results/$(COMP)
RAW        := data/raw/$(COMP)/.complete
PROC       := data/processed/$(COMP)/train.csv
GEN_TRAIN  := data/generated/$(COMP)/generated_train.csv
CHECKS     := $(R)/checks.md
RUN_FILES  := $(foreach r,$(RUNS),$(R)/$(r)/metrics.json)
FOLD_IDS   := $(COMP_FOLD_IDS.$(COMP))
FOLD_LIST  := $(subst $(comma), ,$(FOLDS))
$(if $(and $(FOLD_IDS),$(FOLDS)),$(if $(or $(filter-out $(FOLD_IDS),$(FOLD_LIST)),$(if $(FOLD_LIST),,none)),\
  $(error FOLDS must list folds of $(COMP) ($(subst $(space),$(comma),$(FOLD_IDS))), comma-separated, not '$(FOLDS)')))
FOLD_FILES := $(foreach r,$(RUNS),$(foreach k,$(FOLD_LIST),$(R)/$(r)/fold$(k)/done.json))
TTA_FILES  := $(foreach r,$(RUNS),$(R)/$(r)/tta/metrics.json)
LEADERBOARD:= $(R)/leaderboard.md
ENSEMBLE   := $(R)/ensemble/metrics.json
REPORT     := $(R)/report.html
RUNS_STAMP := $(R)/.runs

# The ensemble, leaderboard and report depend on *which* runs are listed: the stamp is rewritten
# only when MODELS/USE_GEN/TTA change, so an unchanged second `make all` does nothing.
# (Not while MODELS is still unknown: the first pass before the generated include exists.)
ifneq ($(and $(MODELS),$(filter all evaluate ensemble report bundle rerun $(LEADERBOARD) $(ENSEMBLE) $(REPORT),$(MAKECMDGOALS))),)
$(shell mkdir -p $(R) && { echo '$(RUNS) tta=$(TTA)' | cmp -s - $(RUNS_STAMP) || echo '$(RUNS) tta=$(TTA)' > $(RUNS_STAMP); })
endif

.DEFAULT_GOAL := help
.PHONY: FORCE help all venv download check folds baseline train augment generate pseudo pretrain tta evaluate \
        ensemble report submission predict bundle rerun score submit status tensorboard test test-all bench clean

help: ## list every target
	@echo "usage: make <target> [COMP=demo] [MODELS=\"tfidf embed minilm\" (default: the competition's default_models)] [USE_GEN=0|1 | GEN=aug,llm,pseudo] …"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z-]*:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# no recipe of its own: `make -q all` must be able to say "up to date"
all: $(RAW) $(CHECKS) $(PROC) $(RUN_FILES) $(LEADERBOARD) $(ENSEMBLE) $(REPORT) ## download, check, folds, train MODELS, evaluate, ensemble, report

# ---------------------------------------------------------------- environment
venv: $(VENV)/.installed ## create .venv from requirements.txt
$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "$$TORCH_CHECK"
	touch $@
venv-ray: | $(VENV)/.installed ## add Ray to .venv (requirements-ray.txt), for LAUNCHER=ray: on every machine of the cluster
	$(PY) -m pip install -q -r requirements-ray.txt

# torchvision's compiled operators work only beside the torch they were built for; pip can end
# with another pair installed (a wheel cache, an index serving only some builds), and the error
# then surfaces much later, inside timm
define TORCH_CHECK
import importlib.metadata as md, sys
from packaging.requirements import Requirement
torch_v, vision_v = md.version("torch"), md.version("torchvision")
wants = [r for r in map(Requirement, md.requires("torchvision") or []) if r.name == "torch" and not r.marker]
try:
    import torchvision  # a mismatched pair fails here (e.g. "operator torchvision::nms does not exist")
    problem = next((f"it wants {r}" for r in wants if not r.specifier.contains(torch_v, prereleases=True)), "")
except Exception as e:
    problem = (str(e).strip().splitlines() or [type(e).__name__])[0]
if problem:
    sys.exit(f"error: torchvision {vision_v} does not work with torch {torch_v} ({problem}): install the pair requirements.txt pins (rm -rf .venv && make venv)")
endef
$(VENV)/.installed: export TORCH_CHECK := $(TORCH_CHECK)

# ---------------------------------------------------------------- data
download: $(RAW) ## fetch the competition files (Kaggle, or COMP_DIR / COMP_ZIP, or the built-in demo)
# A named COMP_DIR/COMP_ZIP is compared with the stamp's source every time (the stage exits 0
# without touching the stamp when they agree). The stamp is written atomically by the stage, and
# a download that waited on another's lock may fail after that one wrote it: make must never
# delete it (.DELETE_ON_ERROR would).
.PRECIOUS: $(RAW)
$(RAW): $(if $(COMP_DIR)$(COMP_ZIP),FORCE) | $(VENV)/.installed
	$(PY) -m medalist.stages.download --comp $(COMP) --dir "$$COMP_DIR" --zip "$$COMP_ZIP"

check: $(CHECKS) ## audit train/test: duplicates, HTML, LaTeX, links, lengths, tokens; images: unreadable, sizes, pHash duplicates, samples; adversarial AUC
$(CHECKS): $(RAW) $(STAMPS)/data.json $(M)/stages/checks.py $(M)/text/clean.py $(M)/image/audit.py $(M)/image/dedup.py | $(VENV)/.installed
	$(PY) -m medalist.stages.checks --comp $(COMP)

folds: $(PROC) ## clean text once; stratified k folds grouped by (near-)duplicates
$(PROC): $(RAW) $(STAMPS)/data.json $(M)/stages/folds.py $(M)/text/clean.py $(M)/text/dedup.py $(M)/image/dedup.py | $(VENV)/.installed
	$(PY) -m medalist.stages.folds --comp $(COMP)

# ---------------------------------------------------------------- synthetic data
augment: data/generated/$(COMP)/aug.csv ## nlpaug copies of rare-class rows, math protected
data/generated/$(COMP)/aug.csv: $(PROC) configs/augment.yaml $(M)/stages/augment.py $(M)/text/views.py $(M)/text/math_spans.py \
  $(M)/text/augmenters.py $(M)/text/clean.py $(M)/core/generated.py | $(VENV)/.installed
	$(PY) -m medalist.stages.augment --comp $(COMP)

generate: data/generated/$(COMP)/llm.csv ## LLM-written problems via an OpenAI-compatible server (OPENAI_BASE_URL)
data/generated/$(COMP)/llm.csv: $(PROC) configs/generate.yaml $(M)/stages/generate.py $(M)/clients/llm.py $(M)/core/generated.py \
  $(M)/text/clean.py $(M)/text/dedup.py $(R)/tfidf/metrics.json | $(VENV)/.installed
	$(PY) -m medalist.stages.generate --comp $(COMP)

# Pseudo-labels: fold k's come from the teacher's fold-k models only (see stages/pseudo.py). The
# teacher is RUN (checked names; make brings those runs up to date first) or, with RUN empty,
# `teacher:` in configs/pseudo.yaml — which make cannot see, so then the stage always runs.
PSEUDO       := data/generated/$(COMP)/pseudo.csv
PSEUDO_STAMP := data/generated/$(COMP)/.pseudo_teacher
PSEUDO_RUNS  :=#  RUN once checked, and only for this goal: another goal's RUN never reaches a rule line
# A MODELS entry on pseudo-labels (minilm+pseudo) with no pseudo.csv yet is taught by the plain
# runs of MODELS: `make all MODELS="tfidf minilm minilm+pseudo"` trains tfidf and minilm, labels
# with their mean, then trains the student. An existing pseudo.csv is used as it is (its rows name
# their teacher); `make pseudo RUN=…` remakes it.
STUDENTS     := $(strip $(foreach m,$(MODELS),$(if $(filter pseudo,$(call run_srcs,$(m))),$(m))))#  own suffix only (not GEN=pseudo)
AUTO_PSEUDO  :=
ifneq ($(filter pseudo $(PSEUDO),$(MAKECMDGOALS)),)
$(foreach r,$(RUN),$(if $(call is_run,$(r)),,$(call bad_run,$(r))))
PSEUDO_RUNS  := $(RUN)
else ifneq ($(and $(STUDENTS),$(if $(wildcard $(PSEUDO)),,missing)),)
PSEUDO_RUNS  := $(strip $(foreach r,$(RUNS),$(if $(findstring +,$(r)),,$(r))))
$(if $(PSEUDO_RUNS),,$(error $(firstword $(STUDENTS)) trains on pseudo-labels but $(PSEUDO) does not exist and MODELS has no plain run to teach it: add one (MODELS="tfidf $(firstword $(STUDENTS))") or run `make pseudo COMP=$(COMP) RUN=<run>` first))
AUTO_PSEUDO  := $(PSEUDO)
endif
ifneq ($(PSEUDO_RUNS)$(filter pseudo $(PSEUDO),$(MAKECMDGOALS)),)
$(shell mkdir -p data/generated/$(COMP) && { echo '$(PSEUDO_RUNS)' | cmp -s - $(PSEUDO_STAMP) || echo '$(PSEUDO_RUNS)' > $(PSEUDO_STAMP); })
endif
$(GEN_TRAIN): $(AUTO_PSEUDO)
	@test -e $@ || { echo "error: $(or $(filter %+gen %+aug %+llm %+pseudo,$(RUNS)),a run on generated rows) trains on generated rows but $(GEN_TRAIN) does not exist: run \`make augment COMP=$(COMP)\`, \`make generate COMP=$(COMP)\` or \`make pseudo COMP=$(COMP) RUN=<run>\` first" >&2; exit 2; }
pseudo: $(PSEUDO) ## RUN="<run> …": the teacher's confident test predictions, fold by fold → pseudo.csv (train with GEN=pseudo)
$(PSEUDO): $(PSEUDO_STAMP) $(foreach r,$(PSEUDO_RUNS),$(R)/$(r)/metrics.json) $(if $(PSEUDO_RUNS),,FORCE) $(PROC) \
  configs/pseudo.yaml $(STAMPS)/data.json $(M)/stages/pseudo.py $(M)/core/generated.py $(M)/text/dedup.py | $(VENV)/.installed
	$(PY) -m medalist.stages.pseudo --comp $(COMP) --runs "$(PSEUDO_RUNS)"

# ---------------------------------------------------------------- in-domain pretraining
pretrain: | $(VENV)/.installed ## MODEL=<config>: continue a text backbone as a masked LM on COMP's texts → results/<comp>/pretrain/<config>/
	$(if $(MODEL),,$(error pretrain needs MODEL=<config>, e.g. make pretrain MODEL=minilm (configs/pretrain/<config>.yaml)))
	$(if $(call is_config,configs/pretrain,$(MODEL)),,$(error unknown pretraining config '$(MODEL)': no configs/pretrain/$(MODEL).yaml))
	$(MAKE) --no-print-directory $(R)/pretrain/$(MODEL)/done.json
# a model config with `backbone: pretrain:<name>` depends on this target (MODEL_PRETRAIN, from the registry)
$(R)/pretrain/%/done.json: configs/pretrain/%.yaml $(PROC) $(M)/stages/pretrain.py $(M)/models/families/mlm.py \
  $(M)/models/backbones.py $(M)/models/engine.py $(M)/models/training.py $(M)/models/checkpoints.py | $(VENV)/.installed
	$(PY) -m medalist.core.slots --gpus 1 -- $(ACCELERATE) -m medalist.stages.pretrain --comp $(COMP) --model $*

# ---------------------------------------------------------------- training
baseline: ## = make train MODELS=tfidf
	$(MAKE) --no-print-directory train MODELS=tfidf
train: $(if $(FOLDS),$(FOLD_FILES),$(RUN_FILES)) ## train every run in MODELS, k folds each (neural ones under accelerate launch)

TRAIN.inprocess  = $(PY) -m medalist.stages.train
TRAIN.accelerate = $(ACCELERATE) -m medalist.stages.train
# each fold job on its own GPU(s) where there are any (core.slots), or a Ray task (LAUNCHER=ray; core.launch); $(1): a model config
SLOT = $(PY) -m medalist.core.launch --gpus $(MODEL_GPUS.$(1)) --
multi_gpu = $(if $(filter-out 0 1,$(MODEL_GPUS.$(1))), --multi_gpu --num_processes $(MODEL_GPUS.$(1)))

# A config the registry rejects fails only when its run is wanted (MODELS, or a goal needing it).
# $(1): the config, $(2): the run's suffix (+gen, +aug+pseudo, or nothing).
# Each fold of a run is a target of its own (make -j trains folds of one run and of several at
# once); the run's oof.csv, test.csv and metrics.json are merged from them, training nothing.
define RUN_RULE
$(R)/$(1)$(2)/fold%/done.json: configs/models/$(1).yaml $(STAMPS)/override.$(1).json $(PROC) $(if $(2),$(GEN_TRAIN)) $(MODEL_SRC.$(1)) \
  $(foreach p,$(MODEL_PRETRAIN.$(1)),$(R)/pretrain/$(p)/done.json) | $(VENV)/.installed
	$$(if $$(MODEL_ERROR.$(1)),$$(error $$(MODEL_ERROR.$(1))))$$(call SLOT,$(1)) $$(subst launch ,launch$$(call multi_gpu,$(1)) ,$$(TRAIN.$$(MODEL_LAUNCH.$(1)))) --comp $(COMP) --model $(1) $(call gen_args,$(2)) --folds $$*
$(R)/$(1)$(2)/metrics.json: $(foreach k,$(FOLD_IDS),$(R)/$(1)$(2)/fold$(k)/done.json) | $(VENV)/.installed
	$(PY) -m medalist.stages.train --comp $(COMP) --model $(1) $(call gen_args,$(2)) --merge
$(R)/$(1)$(2)/tta/metrics.json: $(R)/$(1)$(2)/metrics.json configs/tta.yaml $(M)/stages/tta.py $(M)/text/views.py \
  $(M)/text/math_spans.py $(M)/text/augmenters.py | $(VENV)/.installed
	$(PY) -m medalist.stages.tta --comp $(COMP) --run $(1)$(2)
endef
$(foreach m,$(basename $(notdir $(MODEL_CONFIGS))),$(eval $(call RUN_RULE,$(m),$(GEN_SUFFIX))))
$(foreach r,$(sort $(filter-out $(addsuffix $(GEN_SUFFIX),$(basename $(notdir $(MODEL_CONFIGS)))),$(RUNS))),$(eval \
  $(call RUN_RULE,$(call run_model,$(r)),$(call run_suffix,$(r)))))

predict: | $(VENV)/.installed ## RUN=<run> [CKPT=dir]: test probabilities from saved weights → submission/<comp>/<run>.csv
	$(call check_run,predict)
	$(PY) -m medalist.stages.predict --comp $(COMP) --run $(RUN) $(if $(CKPT),--ckpt "$$CKPT")

tensorboard: ## serve logs/<comp>/ (loss, learning rate, metric, throughput per fold)
	$(VENV)/bin/tensorboard --logdir logs/$(COMP) --host 127.0.0.1

# ---------------------------------------------------------------- evaluation and ensembling
tta: $(TTA_FILES) ## test-time augmentation views per run (used only where OOF improves)

evaluate: $(LEADERBOARD) ## confusion matrices, per-class scores, leaderboard.md of the runs in MODELS
$(LEADERBOARD): $(RUN_FILES) $(RUNS_STAMP) $(PROC) $(M)/stages/evaluate.py | $(VENV)/.installed
	$(PY) -m medalist.stages.evaluate --comp $(COMP) --runs "$(RUNS)"

ensemble: $(ENSEMBLE) ## OOF-fitted ensemble (method by nested CV) → submission/<comp>/submission.csv
$(ENSEMBLE): $(if $(filter 1,$(TTA)),$(TTA_FILES),$(RUN_FILES)) $(RUNS_STAMP) $(PROC) configs/ensemble.yaml $(M)/stages/ensemble.py $(M)/text/clean.py | $(VENV)/.installed
	$(PY) -m medalist.stages.ensemble --comp $(COMP) --runs "$(RUNS)" $(if $(filter 1,$(TTA)),--tta)

$(REPORT): $(ENSEMBLE) $(LEADERBOARD) $(CHECKS) $(M)/stages/report.py $(M)/stages/report_html.py | $(VENV)/.installed
	$(PY) -m medalist.stages.report --comp $(COMP) --runs "$(RUNS)"
report: $(ENSEMBLE) $(LEADERBOARD) $(CHECKS) | $(VENV)/.installed ## rebuild results/<comp>/report.html (+ report.md)
	$(PY) -m medalist.stages.report --comp $(COMP) --runs "$(RUNS)"

# ---------------------------------------------------------------- submissions
submission: ## RUN=<run>: a validated submission/<comp>/<run>.csv from one run's test.csv
	$(call check_run,submission)
	$(MAKE) --no-print-directory submission/$(COMP)/$(RUN).csv
submission/$(COMP)/%.csv: $(R)/%/metrics.json $(M)/stages/submission.py | $(VENV)/.installed
	$(PY) -m medalist.stages.submission --comp $(COMP) --run $*

# Code competitions: the fitted ensemble with its wheels and an offline kernel (stages/bundle.py),
# remade when the ensemble, the competition config, the pins or any medalist source (its wheel) change
BUNDLE := submission/$(COMP)/bundle/artifacts/bundle.json
bundle: $(BUNDLE) ## code competitions: the ensemble, its wheels and an offline kernel → submission/<comp>/bundle/
$(BUNDLE): $(ENSEMBLE) configs/competitions/$(COMP).yaml requirements.txt pyproject.toml \
  $(wildcard $(M)/*.py $(M)/*/*.py $(M)/*/*/*.py) $(if $(filter 1,$(BUNDLE_TORCH)),FORCE) | $(VENV)/.installed
	$(PY) -m medalist.stages.bundle --comp $(COMP) $(if $(filter 1,$(BUNDLE_TORCH)),--torch)

rerun: $(BUNDLE) | $(VENV)/.installed ## [TEST_DIR=dir]: the bundle's kernel in a fresh venv, network off → submission/<comp>/rerun.csv
	$(PY) -m medalist.stages.rerun --comp $(COMP) --test-dir "$$TEST_DIR"

score: | $(VENV)/.installed ## FILE=sub.csv ANSWERS=answers.csv: score a submission with the competition's metric
	$(if $(and $(FILE),$(ANSWERS)),,$(error score needs FILE=<submission.csv> ANSWERS=<answers.csv>))
	$(PY) -m medalist.stages.score --comp $(COMP) --file "$$FILE" --answers "$$ANSWERS"

submit: | $(VENV)/.installed ## upload FILE (default: the ensemble's submission) to Kaggle; never automatic
	$(PY) -m medalist.stages.submit --comp $(COMP) --file "$$FILE" --message "$$MESSAGE"

status: | $(VENV)/.installed ## poll Kaggle for the public scores of past submissions into the ledger
	$(PY) -m medalist.stages.submit --comp $(COMP) --status

# ---------------------------------------------------------------- benchmark
# (BENCH_* knobs: at the top.) The runs are ordinary targets in results/$(BENCH_COMP)/, so a
# rerun of the bench reuses them. The plain `all` goes first (a student's pseudo-labels come from
# the plain teachers) and, after a USE_GEN=1 pass, once more (nothing retrains) so
# results/<comp>/ensemble/ ends as the plain ensemble.
BENCH_ALL = $(MAKE) --no-print-directory all COMP="$$BENCH_COMP" COMP_DIR="$$BENCH_DIR" MODELS="$$BENCH_MODELS"
bench: | $(VENV)/.installed ## score, speed, memory, growth against plain references → BENCHMARKS.md
	$(BENCH_ALL)
ifeq ($(BENCH_GEN),1)
	$(MAKE) --no-print-directory augment COMP="$$BENCH_COMP" COMP_DIR="$$BENCH_DIR" MODELS="$$BENCH_MODELS"
	$(BENCH_ALL) USE_GEN=1
	$(BENCH_ALL)
endif
	$(PY) bench/run_bench.py --comp "$$BENCH_COMP" --comp-dir "$$BENCH_DIR" --runs "$$BENCH_MODELS" --model "$$BENCH_NEURAL" $$BENCH_ARGS

# ---------------------------------------------------------------- project
test: | $(VENV)/.installed ## the fast offline tests, after every change (pipeline, kill-and-resume and bench runs left out)
	$(PY) -m pytest -q -m "not slow" tests

test-all: | $(VENV)/.installed ## every offline test, slow ones included (what CI runs)
	$(PY) -m pytest -q tests

clean: ## remove everything generated for COMP (keeps data/raw, the LLM cache, the submission ledger, .venv)
	rm -rf data/processed/$(COMP) results/$(COMP) logs/$(COMP) images/$(COMP)
	rm -f data/generated/$(COMP)/{aug,llm,pseudo,generated_train}.csv submission/$(COMP)/*.json
	@if [ -d submission/$(COMP)/bundle ]; then rm -rf submission/$(COMP)/bundle submission/$(COMP)/.rerun; \
	  echo "removed submission/$(COMP)/bundle (make bundle rebuilds it; datasets and kernels already on Kaggle stay there)"; fi
	find submission/$(COMP) -name '*.csv' ! -name ledger.csv -delete 2>/dev/null || true
	@echo "kept data/raw/$(COMP): rm -rf data/raw/$(COMP) to download it again"

FORCE:
