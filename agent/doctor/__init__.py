"""The doctor: a preflight of this host for the agent (charon and its plugins, kernel
support for route mode, firewall, rp_filter, MSS, token, the article's CIDR rules), each
OK, WARN or FAIL with a fix. Runs without an agent, in-process for both
`space-vpn-agent doctor` and `agentctl doctor`. Imports config, core and adapters only.
"""

from agent.doctor.checks import Check
from agent.doctor.report import EXIT_CODES, render, run_checks, run_doctor, to_json

__all__ = ["Check", "EXIT_CODES", "render", "run_checks", "run_doctor", "to_json"]
