"""Benchmark records: every result file carries the machine and library versions."""

from __future__ import annotations

from jax_cer.bench.machine import machine_record


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["jax_cer"] = machine_record()
