"""The gateway side's request handling, shared by the agent and the simulator.

``routing`` finds the handler of a request (method + resource) and shapes the Sanji answer
(task_id echoed, 404/405 for unknown resources, 400 for bad data, 500 for a handler's bug);
``jobs`` keeps the background work a request starts, by task_id, cancellable until its point
of no return; ``bodies`` are the request bodies; ``handlers`` answer the requests whose logic
is the same on a real and on a simulated gateway (properties, status, reboot, firmware,
import, cancel), through the small ports of ``host``: the agent implements them with the
machine it runs on (``edgefleet.agent.handlers``), the simulator with in-memory state
(``edgefleet.simulator.gateway``). Nothing here imports the server, the agent or the simulator.
"""
