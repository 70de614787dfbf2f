# Two commands for a new user: `make run` (install + train) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CONFIG ?= configs/mnist_adam.yaml

.PHONY: install install-test run test clean

install:
	$(PIP) install -e .

install-test:  # with every extra the tests use: a real Ray cluster, onnxruntime, event files
	$(PIP) install -e '.[test,ray,onnx,tensorboard]'

run: install
	cnntrain run $(CONFIG)

test: install-test
	$(PYTHON) -m pytest -q

clean:
	rm -rf runs build *.egg-info .pytest_cache
