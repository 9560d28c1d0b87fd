from nst_daemon.errors import NotImplementedYet


def run(*args, **kwargs) -> None:
    raise NotImplementedYet("`nstd stylize` is not built yet (issue: style engines)")
