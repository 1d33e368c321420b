"""Benchmark crl's SAC against Stable-Baselines3's SAC on one Meta-World task (env-steps/s, CPU or CUDA).

Both agents are measured in the same run, on the same machine, under the same conditions:

- Same task (``--task``, default push-v3) and the same env: crl's ``MetaWorldEnv`` (Meta-World v3,
  goal-observable, 200-step episodes, fresh position at every reset), one env. crl steps it through
  ``make_vec(task, 1, seed, backend)``; with ``--backend gymnasium`` (default) that is the very same
  Python ``MetaWorldEnv`` SB3 steps (through its DummyVecEnv), so env cost is identical.
  ``--backend envpool`` gives crl EnvPool's C++ port instead (then the env costs differ).
- Same network sizes (with ``--arch same`` the same networks, below): 4×256 actor and twin 4×256
  critics (SB3 ``policy_kwargs=dict(net_arch=[256]*4)``), batch size 128, learning rate 1e-3,
  γ 0.99, τ 0.005 (crl polyak 0.995), replay buffer 1e6.
- One gradient step per env step on two schedules, each library on both: every 50 steps 50 updates
  (Continual World's ``update_every=50``; SB3 ``train_freq=50, gradient_steps=50``) and one update after
  every step (crl ``update_every=1``; SB3 ``train_freq=1, gradient_steps=1``). Ratios compare crl with SB3
  on the same schedule.
- Same warm-up: ``--learning-starts`` uniform-random steps (SB3 ``learning_starts``; crl
  ``start_steps = update_after``), then a margin of steps with updates (``--warmup-updates``), then
  the timed phase of ``--steps`` env steps, every one of which does a gradient step (the count of
  gradient steps done in the window is checked and printed). Nothing is subtracted: both sides time
  act + env step + store + update. The timed phase runs in ``--rounds`` interleaved rounds (crl,
  crl, SB3, crl, ...), so background load on a shared machine falls on every contender alike.
- Same device (``--device``, default cpu): with ``cuda`` both learners, their replay buffers and their
  updates run on the GPU while the env steps on the CPU; the clock is read after a device synchronize.
- Same torch thread count (``--threads``). The default ``1,2`` measures every contender at 1 and then at
  2 threads (the two cores of the reference machine) in the same run (``torch.set_num_threads`` between).
- Separately, the pure gradient-update rate (env excluded) on the filled buffer: crl
  ``agent.gradient_step()`` × N, SB3 ``model.train(gradient_steps=N, batch_size=128)``.

Networks, ``--arch`` (default: both, in the same run):

- ``same``: identical networks on both sides (the fair comparison of the two update loops): crl's
  SAC with ``body=mlp``, ``activation=relu``, one head (Linear+ReLU 4×256 actor and critics, μ and
  log σ linear heads), against SB3's ``MlpPolicy`` with ``net_arch=[256]*4``.
- ``cw``: crl with Continual World's networks, what ``crl train`` runs (Linear→LayerNorm→tanh first
  layer, LeakyReLU(0.2) after the others, one output head and one α per task; ``--heads`` of them,
  default 10 as in CW10, the task at position 0), against the same SB3 (more work on crl's side).

crl updates actor, critics and α with one fused Adam; SB3 uses three Adams. ``--compile off,on`` also
times crl with ``agent.compile`` (SAC's losses through ``torch.compile``; compiled in the untimed warm-up,
at the first thread count: inductor's fused elementwise kernels keep that count, the matmuls follow
``--threads``).

    python scripts/bench_sac.py                 # push-v3, 2000 timed steps, 1 and 2 threads, fp32, both --arch
    python scripts/bench_sac.py --precision fp32,bf16 --arch same --threads 2
    python scripts/bench_sac.py --task reach-v3 --steps 1000 --backend envpool
    python scripts/bench_sac.py --arch same --compile off,on --threads 1
    python scripts/bench_sac.py --device cuda --arch same,cw --compile off,on --threads 1   # CUDA graphs
"""

from __future__ import annotations

import argparse
import time

START = time.perf_counter()

import torch

from crl.devices import require_native_bf16
from crl.core import Transitions, UsageError
from crl.loop import seed_everything
from crl.envs.metaworld import MetaWorldEnv, make_vec, metaworld_task
from crl.envs.vector import resolve_backend


class CrlContender:
    """crl's SAC driven by the inner loop of crl/loop.py (act → VecEnv.step → observe → update)."""

    def __init__(self, args, update_every: int, precision: str, arch: str, compiled: bool):
        from crl.agents.sac import SAC, SACConfig

        seed_everything(args.seed)
        self.name = f"crl SAC {arch} {precision}{' compiled' if compiled else ''} (update_every={update_every})"
        self.device = torch.device(args.device)
        self.update_every, self.precision, self.arch, self.compiled = update_every, precision, arch, compiled
        networks = dict(body="mlp", activation="relu", multihead=False) if arch == "same" else {}
        cfg = SACConfig(batch_size=args.batch_size, lr=args.lr, start_steps=args.learning_starts,
                        update_after=args.learning_starts, update_every=update_every, replay_ratio=1.0,
                        precision=precision, compile=compiled, **networks)
        self.task = metaworld_task(args.task, 0, args.heads)
        self.agent = SAC(self.task.obs_dim, self.task.act_dim, args.heads, cfg, self.device)  # multihead=False: 1 head
        self.agent.begin_task(self.task)
        self.env = make_vec(args.task, 1, args.seed, args.backend)
        self.obs = torch.as_tensor(self.env.reset(), dtype=torch.float32, device=self.device)
        self.first = torch.ones(self.env.num_envs, dtype=torch.bool, device=self.device)
        self.task_idx = torch.full((self.env.num_envs,), self.task.index, dtype=torch.long, device=self.device)
        # Warm-up: random steps, then at least ``warmup_updates`` gradient steps, ending right after
        # an update round so that every timed chunk (a multiple of update_every steps) holds exactly
        # as many gradient steps as env steps.
        while self.agent.gradient_steps < args.warmup_updates or self.agent.pending_updates >= 1:
            self.step()

    def step(self) -> None:
        agent, device = self.agent, self.device
        action = agent.act(self.obs, self.task.index, explore=True, first=self.first)
        out = self.env.step(action.cpu().numpy())
        agent.observe(Transitions(
            obs=self.obs, action=action, reward=torch.as_tensor(out.reward, device=device),
            next_obs=torch.as_tensor(out.final_obs, dtype=torch.float32, device=device),
            terminated=torch.as_tensor(out.terminated, dtype=torch.float32, device=device),
            truncated=torch.as_tensor(out.truncated, dtype=torch.float32, device=device),
            task_index=self.task_idx,
        ))
        agent.update()
        self.obs = torch.as_tensor(out.obs, dtype=torch.float32, device=device)
        self.first = torch.as_tensor(out.terminated | out.truncated, device=device)

    def run_steps(self, n: int) -> tuple[int, int]:
        """Run about ``n`` env steps (a multiple of update_every); returns (steps, gradient steps)."""
        n = -(-n // self.update_every) * self.update_every
        g0 = self.agent.gradient_steps
        for _ in range(n):
            self.step()
        return n, self.agent.gradient_steps - g0

    def run_updates(self, n: int) -> None:
        for _ in range(n):
            self.agent.gradient_step()

    def close(self) -> None:
        self.env.close()


class SB3Contender:
    def __init__(self, args, train_freq: int):
        from stable_baselines3 import SAC

        seed_everything(args.seed)
        self.name, self.batch_size = f"SB3 SAC (train_freq={train_freq})", args.batch_size
        self.update_every = train_freq
        self.env = MetaWorldEnv(args.task, seed=args.seed)
        self.model = SAC("MlpPolicy", self.env, learning_rate=args.lr, buffer_size=1_000_000,
                         learning_starts=args.learning_starts, batch_size=args.batch_size, tau=0.005, gamma=0.99,
                         train_freq=train_freq, gradient_steps=train_freq, policy_kwargs=dict(net_arch=[256] * 4),
                         seed=args.seed, device=args.device, verbose=0)
        # Warm-up: learning_starts random steps, then warmup_updates steps with updates. SB3 trains
        # once num_timesteps > learning_starts, train_freq updates every train_freq steps.
        self.model.learn(total_timesteps=args.learning_starts + args.warmup_updates)

    def run_steps(self, n: int) -> tuple[int, int]:
        n = -(-n // self.update_every) * self.update_every
        n0 = self.model._n_updates
        self.model.learn(total_timesteps=n, reset_num_timesteps=False)
        return n, self.model._n_updates - n0

    def run_updates(self, n: int) -> None:
        self.model.train(gradient_steps=n, batch_size=self.batch_size)

    def close(self) -> None:
        self.env.close()


def measure(contenders: list, args) -> list[dict]:
    """Time every contender in ``args.rounds`` interleaved rounds (crl, crl, SB3, crl, crl, SB3, ...),
    so a change in background load during the run hits all of them alike; rates are totals over rounds."""
    totals = {c.name: {"steps": 0, "updates": 0, "seconds": 0.0, "update_seconds": 0.0} for c in contenders}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)  # GPU work is asynchronous
    for c in contenders:
        c.run_updates(10)
    for _ in range(args.rounds):
        for c in contenders:
            sync()
            t0 = time.perf_counter()
            steps, updates = c.run_steps(args.steps // args.rounds)
            sync()
            tot = totals[c.name]
            tot["seconds"] += time.perf_counter() - t0
            tot["steps"] += steps
            tot["updates"] += updates
        for c in contenders:  # pure update rate on the filled buffer, env excluded
            sync()
            t0 = time.perf_counter()
            c.run_updates(args.update_calls // args.rounds)
            sync()
            totals[c.name]["update_seconds"] += time.perf_counter() - t0
    n_updates = args.update_calls // args.rounds * args.rounds
    return [{"name": name, "steps": t["steps"], "updates": t["updates"], "sps": t["steps"] / t["seconds"],
             "ups": n_updates / t["update_seconds"]} for name, t in totals.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="push-v3", help="Meta-World v3 task (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2000,
                        help="timed env steps per agent, each with one update (default: %(default)s; crl's "
                             "update_every=50 run rounds it up to a multiple of 50)")
    parser.add_argument("--threads", default="1,2",
                        help="torch threads for both, or a comma list measured one after another in the same run "
                             "(e.g. 1,2) (default: %(default)s)")
    parser.add_argument("--backend", default="gymnasium", choices=["gymnasium", "envpool", "auto"],
                        help="crl's VecEnv backend; gymnasium = the same Python env SB3 steps (default: %(default)s)")
    parser.add_argument("--learning-starts", type=int, default=1000,
                        help="random-action steps before updates start, both agents (default: %(default)s)")
    parser.add_argument("--warmup-updates", type=int, default=100,
                        help="untimed steps with updates before the timed window (default: %(default)s)")
    parser.add_argument("--update-calls", type=int, default=200,
                        help="gradient steps timed for the pure update rate (default: %(default)s)")
    parser.add_argument("--arch", default="same,cw",
                        help="crl's networks, comma-separated: same (SB3's Linear+ReLU MLPs, one head), cw "
                             "(Continual World's) (default: %(default)s)")
    parser.add_argument("--heads", type=int, default=10,
                        help="crl output heads / α's with --arch cw (CW10: 10) (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", default="fp32",
                        help="crl's update precision(s), comma-separated: fp32, bf16 (SB3 always fp32) (default: %(default)s)")
    parser.add_argument("--compile", default="off",
                        help="crl's update through torch.compile (agent.compile), comma-separated: off, on; 'off,on' "
                             "measures both in the same run (compilation happens in the untimed warm-up) "
                             "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved timing rounds; each contender runs steps/rounds per round (default: %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where both learners and their replay live; the env steps on the CPU "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-sb3", action="store_true", help="measure crl only (no ratio)")
    args = parser.parse_args()
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
        precisions, archs, compiles = args.precision.split(","), args.arch.split(","), args.compile.split(",")
        if (any(t < 1 for t in thread_counts) or not set(precisions) <= {"fp32", "bf16"}
                or not set(archs) <= {"same", "cw"} or not set(compiles) <= {"off", "on"}):
            raise ValueError
    except ValueError:
        parser.exit(2, f"bad --threads {args.threads!r}, --precision {args.precision!r}, --arch {args.arch!r} or "
                       f"--compile {args.compile!r}: threads are positive integers, precisions fp32 or bf16, archs "
                       "same or cw, compile off or on, comma-separated\n")

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "--device cuda: CUDA is not available on this machine; allowed here: cpu\n")
    if "bf16" in precisions:
        try:
            require_native_bf16("--precision bf16", torch.device(args.device))
        except UsageError as refused:
            parser.exit(2, f"{refused}\n")
    torch.set_num_threads(thread_counts[0])
    backend = resolve_backend(args.backend)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"task {args.task}, 1 env, crl backend {backend}, learners on {where}, torch {torch.__version__}, "
          f"torch threads {args.threads} (both), batch {args.batch_size}, 4x256 actor + twin critics")
    print(f"warm-up {args.learning_starts} random steps + >= {args.warmup_updates} steps with updates; "
          f"timed {args.steps} env steps at 1 gradient step per env step; pure update rate over "
          f"{args.update_calls} gradient steps")
    print(f"networks: SB3 = Linear+ReLU MLP, single head, 3 Adams, fp32; crl (one fused Adam, update in "
          f"{args.precision}) = same: Linear+ReLU MLP, single head; cw: Continual World MLP (Linear-LayerNorm-tanh, "
          f"then LeakyReLU), {args.heads} heads")

    crl = [CrlContender(args, update_every, precision, arch, compiled == "on")
           for arch in archs for precision in precisions for compiled in compiles for update_every in (50, 1)]
    # SB3 on both schedules too, so that each crl schedule is compared with SB3 on the same one
    sb3 = [] if args.skip_sb3 else [SB3Contender(args, 50), SB3Contender(args, 1)]
    contenders = crl + sb3
    headline = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        results = {r["name"]: r for r in measure(contenders, args)}
        print(f"\n-- {threads} torch thread(s) --")
        print(f"{'name':45s} {'env-steps/s':>12s} {'updates/s':>10s} {'timed steps':>12s} {'grad steps in window':>21s}")
        for r in results.values():
            print(f"{r['name']:45s} {r['sps']:12.1f} {r['ups']:10.1f} {r['steps']:12d} {r['updates']:21d}")
        if sb3:
            reference = {c.update_every: results[c.name]["sps"] for c in sb3}
            ratio = {c.name: results[c.name]["sps"] / reference[c.update_every] for c in crl}
            for c in crl:
                print(f"ratio {c.name} / SB3 on the same schedule (env-steps/s): {ratio[c.name]:.2f}")
            for every_50, every_step in zip(crl[::2], crl[1::2]):  # built as (50, 1) pairs per setting
                networks = "identical networks" if every_50.arch == "same" else "crl with CW networks"
                setting = every_50.precision + (", compiled" if every_50.compiled else "")
                headline.append(f"ratio crl/sb3 (env-steps/s, {args.device}, {threads} thread(s), {setting}, "
                                f"{networks}): {ratio[every_50.name]:.2f} every 50 steps, "
                                f"{ratio[every_step.name]:.2f} every step")
    for c in contenders:
        c.close()
    print(f"\n(benchmark wall time {time.perf_counter() - START:.0f} s)")
    print("\n".join(headline))


if __name__ == "__main__":
    main()
