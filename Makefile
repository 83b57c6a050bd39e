# The few commands a person runs. `make setup` once, then `make demo` or `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup setup-worker test test-fast lint docs demo kafka kafka-stop bench bench-scale soak fuzz study-quick study study-domains study-cifar adaptive certified artefacts models clean

$(PYTHON):
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

setup: $(PYTHON)  ## the worker, its tests and the study tools (torch, ART) in .venv/
	$(PYTHON) -m pip install -q -e '.[test,study]'

setup-worker: $(PYTHON)  ## the worker alone (no torch)
	$(PYTHON) -m pip install -q -e '.[test]'

test:  ## the whole suite: unit, property, integration against a real Kafka broker, end to end
	$(PYTHON) -m pytest -q

test-fast:  ## everything that needs no broker
	$(PYTHON) -m pytest -q -m "not kafka"

lint:
	$(BIN)/ruff check verifier worker study bench tests fuzz docs/hooks

docs:  ## the documentation site (docs/, mkdocs.yml) into site/; warnings are errors
	$(BIN)/mkdocs build --strict --site-dir site

demo:  ## local broker, two workers, a recorded stream replayed, a verdict table
	$(BIN)/radiusguard demo

kafka:  ## start the local broker; prints host:port last
	$(BIN)/radiusguard kafka start

kafka-stop:
	$(BIN)/radiusguard kafka stop

bench:  ## speed of the verifier and of the worker through Kafka (prints figures)
	$(PYTHON) -m bench.verifier
	$(PYTHON) -m bench.worker

bench-scale:  ## DeepZono/DeepPoly cost on ConvSmall..ConvBig and the ResNets (trains them into .cache/refnets once)
	$(PYTHON) -m bench.scale $(if $(NETS),--nets $(NETS)) $(if $(N),--n $(N))

soak:  ## one worker at 80 % of capacity for SOAK_MINUTES (default 5); prints lag, latency, memory
	$(PYTHON) -m bench.soak --minutes $(or $(SOAK_MINUTES),5)

FUZZ_RUNS ?= 1000000
fuzz:  ## fuzz the input decoder with atheris; findings in .cache/fuzz/
	$(PYTHON) -m pip install -q 'atheris==3.0.0'
	mkdir -p .cache/fuzz/corpus
	$(PYTHON) fuzz/codec_fuzz.py -runs=$(FUZZ_RUNS) -artifact_prefix=.cache/fuzz/ .cache/fuzz/corpus

study-quick:  ## the paper's study on one FNN and one CNN, ~20 inputs per category (minutes)
	$(BIN)/radiusguard study --config study/configs/quick.toml --out reports/quick

study-domains:  ## DeepZono and DeepPoly side by side on the shipped FNN and CNN; reports/domains/
	$(BIN)/radiusguard study --config study/configs/domains.toml --out reports/domains

study:  ## the paper's 31 MNIST networks of Table I (trains those not shipped; ~2 h on 2 cores)
	$(BIN)/radiusguard study --config study/configs/full.toml --out reports/full

adaptive:  ## adaptive attacks (high-confidence PGD and C&W, radius-aware, Algorithm 2 runs) against every policy; reports/adaptive/
	$(PYTHON) -m study.adaptive --out reports/adaptive

study-cifar:  ## Table I's LeNet-5 rows; CIFAR=DIR of the CIFAR-10 python batches (not shipped)
	@test -n "$(CIFAR)" || { echo "make study-cifar needs CIFAR=DIR (cifar-10-batches-py)"; exit 2; }
	$(BIN)/radiusguard study --config study/configs/cifar.toml --data cifar10:$(CIFAR) --out reports/cifar

artefacts:  ## recalibrate the shipped profiles and rebuild the demo stream
	$(PYTHON) -m study.artefacts

models:  ## retrain the reference models and the certified CNN (needs the study extra)
	$(PYTHON) -m study.train --nets fnn-3x30-relu,fnn-3x30-sigmoid,fnn-3x30-tanh,cnn-6-16-128-relu --out models/ --slice
	$(BIN)/radiusguard train --certified 0.2 --net cnn-32-64-256-relu --epochs 30 --ramp 12 --name cnn-certified --out models

certified:  ## attacks at budgets 0.5 tau..0.3 against the standard and the certified CNN; reports/certified/
	$(PYTHON) -m study.certified.evaluate --out reports/certified

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info site
