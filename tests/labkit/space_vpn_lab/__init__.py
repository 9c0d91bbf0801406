"""space-vpn-lab: a simulated Private Space on one machine (namespaces, real charon
daemons, a fake Platform API) to demo, test and benchmark space-vpn-agent. Never shipped
in the agent's package; it imports from `agent`, the agent never imports it."""
