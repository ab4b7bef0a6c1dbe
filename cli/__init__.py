"""The `mlscope` command line (`main.py`), its evaluation commands (`evaluate.py`) and the demo
pipeline it runs (`demo.py`). Nothing is imported here, so `python -m mlscope.cli.demo` and
other light users load only what they use."""
