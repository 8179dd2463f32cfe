"""The README's trainer loop: K rollouts of one task, prewarmed, rewards back."""

import asyncio

import swe_env

from conftest import bash, env

K = 4
SORT = (
    "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n"
    "    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>"
)
TOUCHING = (
    "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n        if merged and start < merged[-1][1]:\n=======\n"
    "        if merged and start <= merged[-1][1]:\n>>>>>>> REPLACE\n</tool>"
)
SUBMIT = [bash("git diff > /tmp/fix.patch"), "<tool: submit>\n/tmp/fix.patch\n</tool>"]


def policy(i):
    """A stand-in for the model: even rollouts write the whole fix, odd ones half of it."""
    return ([SORT, TOUCHING] if i % 2 == 0 else [SORT]) + SUBMIT


async def rollout(client, task_id, i):
    async with client.episode(task_id, max_turns=8, grade_on_submit=True) as ep:
        for action in policy(i):
            out = await ep.step(action)
            if out.done:
                break
        return ep.info.warm, ep.reward


def test_k_rollouts_of_one_task_with_prewarm_and_rewards(token, task_id):
    async def main():
        async with swe_env.AsyncClient(env("SWE_ENV_TCP"), token) as client:
            warmed = await client.prewarm(task_id, K, wait=True, wait_timeout=60)
            assert warmed.ready >= K, warmed
            return await asyncio.gather(*(rollout(client, task_id, i) for i in range(K)))

    results = asyncio.run(main())
    assert all(warm for warm, _ in results), results
    rewards = [reward for _, reward in results]
    assert None not in rewards, rewards
    assert rewards[0] == rewards[2] and rewards[1] == rewards[3], rewards
    assert rewards[0] > rewards[1], rewards
