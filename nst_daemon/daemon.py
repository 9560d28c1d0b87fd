from nst_daemon.errors import NotImplementedYet


def run(settings) -> int:
    raise NotImplementedYet("`nstd run` is not built yet (issue: the daemon core)")
