"""Operator definitions: one class per operator, the one place that knows it.

Each definition checks its arguments, names itself, states its run-ahead bound and
attaches its running form to a run (:class:`flowlet._engine.plan.Stage`). The front
ends (``Pipeline``, ``Flow``, ``op``, ``functional``) only make definitions and add
them to a pipeline.
"""
