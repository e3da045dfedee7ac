"""Score distillation: a frozen text-to-image teacher as a loss on rendered images.

Every method is DESIGN.md §2's one distribution-matching gradient. The images (B, 3, H, W) in [0, 1], from any
renderer, are resized to the teacher's resolution and encoded by its VAE *with* gradient to latents ``x0``;
the timestep policy picks a timestep per image, ``x = x0 + sigma * eps``, and

    grad = w(sigma) * dm_gradient(x0, real_x0, fake_x0, sigma, "sds") = w(sigma) * (fake_x0 - real_x0) / sigma,

which is in epsilon units. ``surrogate_loss(x0, grad)`` (mean over the batch) turns it into a loss whose
gradient with respect to ``x0`` is ``grad / B``, so ``loss.backward()`` carries it through the VAE encoder to
the images and on to whatever rendered them. The methods differ only in ``real_x0`` and ``fake_x0``
(``D_c``, ``D_u``, ``D_n``: the teacher's x0 for the prompt, the empty prompt and the negative prompt):

- SDS (``sds.py``; DreamFusion, Poole et al. 2022): ``real = D_u + s (D_c - D_u)``, ``fake = x0``, so
  ``grad = w (eps_hat - eps)``: the injected noise stands in for the fake score.
- CSD (``csd.py``; classifier score distillation, Yu et al. 2023, with its negative-prompt form):
  ``fake = D_u``, ``real = D_u + w_pos (D_c - D_u) - w_neg (D_n - D_u)``, so
  ``grad = w [w_pos (eps_c - eps_u) - w_neg (eps_n - eps_u)]``: the classifier scores alone, no noise term.
- NPG (``npg.py``; HumanGaussian's annealed negative prompt guidance, Liu et al. 2024).
- VSD (``vsd.py``; ProlificDreamer, Wang et al. 2023): ``real`` as SDS, ``fake`` a LoRA fake score, trained
  in the guidance's extra phase ``fake_score``.

``w(sigma)``: "sds" is DreamFusion's ``1 - abar_t = sigma^2 / (1 + sigma^2)``; "uniform" is 1; "snr" is
``sigma = SNR^-1/2``, which makes the gradient the x0 residual ``fake_x0 - real_x0`` itself.

Modules point down only: ``base`` (the output, the protocol, weightings) <- ``teacher`` (the frozen model as
every method sees it) <- ``sds``, ``csd``, ``npg``, ``vsd`` (a config that builds its guidance) <- ``guidance``
(the union of the configs). A job builds a guidance with ``config.build(model)``.
"""
