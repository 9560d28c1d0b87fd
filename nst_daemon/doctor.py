from nst_daemon.errors import NotImplementedYet


def run(*args, **kwargs) -> int:
    raise NotImplementedYet("`nstd doctor` is not built yet (issue: running it at home)")
