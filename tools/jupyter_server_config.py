# JupyterLab started from .venv/bin/jupyter reads this file from .venv/etc/jupyter/ (`make setup` puts it there).
# Before JupyterLab writes a notebook of this checkout's nbs/, it is cleaned as it is committed: nbdev's own save hook
# (execution counts, metadata; `jupyter_hooks = true` in pyproject.toml), and its outputs dropped, since the notebooks
# are committed without outputs (the docs build runs them). Opening, running and saving a workflow notebook then leaves
# `git status` clean. Notebooks elsewhere are left to nbdev's hook alone, which does nothing outside an nbdev project.
def vitartifacts_clean_on_save(model=None, path=None, **kwargs):
    try:
        from pathlib import Path
        from nbdev.clean import clean_jupyter
        from nbdev.config import get_config
    except ModuleNotFoundError: return
    manager = kwargs.get('contents_manager')
    if manager is not None and path is not None: path = manager._get_os_path(path)   # Jupyter passes the path below its root
    clean_jupyter(model=model, path=path, **kwargs)
    if not model or model.get('type') != 'notebook' or path is None: return
    try: cfg = get_config(path=Path(path).resolve().parent)
    except Exception: return
    if cfg.get('lib_name') != 'vitartifacts' or not Path(path).resolve().is_relative_to(Path(cfg.config_path) / 'nbs'): return
    for cell in model['content'].get('cells', []):
        if cell.get('cell_type') == 'code': cell['outputs'], cell['execution_count'] = [], None


c.ContentsManager.pre_save_hook = vitartifacts_clean_on_save  # noqa: F821 (`c` is the config object Jupyter provides)
