"""`ringkv check` and `ringkv bench`: the evaluation's stages and the load generator.

Both are clients of the protocol only (ringkv.client), so they judge any
implementation. The modules, from the runner down:

- suite:  the stage list, `--stages` selection, running a suite (`run_check`), JSON
- part1, part2, seq:  the stages, by part of the evaluation; a stage module
  imports only the shared modules below, never another stage module
- base:   the run's parameters (`Params`, `Scale`), shared `Context`, `Stage`,
  `Verdict`, the exact-answer `Checklist` and wording the stages share
- load:   request pools with per-batch figures (`Tally`), self-describing
  values, membership and pid polls, bench runs as a step of a stage
- nodes:  suspending and resuming nodes by pid (SIGSTOP / SIGCONT, local or ssh)
- report: what a run prints and the figures it keeps
- bench:  closed-loop PUT→GET load in worker processes (`ringkv bench`)
"""
