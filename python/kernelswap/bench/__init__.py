"""kernelswap's benchmark harness; the command line `python -m kernelswap bench` is cli.py.

  cli.py      options, the whole run, --merge     plan.py     the order of work under a budget
  shapes.py   named shape sets                    providers/  ours, baselines and peers, per op
  runner.py   one op at one shape -> CSV rows     timing.py   timers and the measured peaks
  models.py   CNN and decoder benchmarks          report.py   CSV, bench.md, console table
  targets.py  TARGETS.md P1-P11 and verdicts      env.py      GPU, versions, commit, date tags
"""
