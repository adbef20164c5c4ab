"""The programs tools/bench.py runs in fresh processes, each printing one `BENCH_JSON {...}` line:

    python -m tools.bench_children.npunet_case CT OUT [npunet segment options]   a whole case, by stage
    python -m tools.bench_children.torch_case CT OUT THREADS                    the same with the torch forward
    python -m tools.bench_children.startup                                      import, load, first forward
"""
