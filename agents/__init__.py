"""crl's agents. Each file registers what it defines (``crl.register``): base learners (SAC, TD3, L2M)
with ``@register_agent``, continual methods as extensions with ``@register_extension``, and the names
users know (``ewc`` = ``sac+ewc`` with Continual World's λ) with ``register_variant``.

crl.registry finds every module here (a new file needs no other edit) and answers questions about an agent
name (``resolve``, ``agent_class``, ``make_agent_config``). This package imports nothing, so its modules can
be discovered without an import cycle.
"""
