# Set-up and the two entry points of README.md. Python 3.10+ and pip are all
# that must be on the machine; everything else comes from requirements/.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c requirements/constraints.txt -e ".[test,radiomics,analysis]"
	touch $(STAMP)

.PHONY: install demo test
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/apple-perturb demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest
