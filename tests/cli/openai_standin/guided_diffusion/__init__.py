"""A stand-in for OpenAI's guided_diffusion package, for the bench test: the script_util surface fastddpm's
bench calls, on tests/adm_reference.py (an independent model of their code). Never installed; the test puts
this folder on sys.path."""
