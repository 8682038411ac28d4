"""The Flower runtime: the same methods, server loop and evaluation, over Flower's Message API.

The server side is the ordinary :class:`~adamodal.runtime.simulator.Simulator` run inside a
ServerApp's ``@app.main()`` with a :class:`~adamodal.flower.clients.FlowerClients` that
delivers each phase with ``grid.send_and_receive``; the client side is a ClientApp whose
handlers call the engine's own :func:`~adamodal.runtime.clients.client_step` and
:func:`~adamodal.runtime.clients.evaluate_client`. Nothing about an algorithm lives here.

Modules: ``records`` (Message <-> Flower records), ``clients`` (the server's view of the
SuperNodes), ``server_app`` / ``client_app`` (the Flower components), ``app`` (the Flower
app folder a run is submitted as), ``processes`` (SuperLink, SuperNode and run submission),
``certs`` (a self-signed CA and certificates for a test consortium).
"""
