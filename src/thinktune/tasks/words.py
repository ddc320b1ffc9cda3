"""The embedded world's problems posed in words, for a real pretrained chat model.

A 1M-parameter demo model reads ``63*15+597``; an instruct model reads a short story and is asked for the
answer in ``\\boxed{}``. Each family has a few phrasings; which one a problem gets is seeded by its id, so a
problem reads the same everywhere. The teacher's trace then starts by writing the story as the expression
it stands for (``63*15+597:``), which is the step a model of words has to learn first, and goes on with
the world's arithmetic steps.

Held-out and training problems stay disjoint: the wording is a function of the problem, and the world never
trains on a held-out expression.
"""

from __future__ import annotations

import random

from thinktune.tasks.teacher import Trace
from thinktune.tasks.world import Problem

# Operands in the order the family's expression uses them: add a+b, mul a*b, chain a*b+c, chain2 a*b+c*d.
PHRASINGS = {
    "add": (
        "A shop sold {0} apples on Monday and {1} apples on Tuesday. How many apples did it sell in all?",
        "Ann has {0} stamps and Ben has {1} stamps. How many stamps do they have together?",
        "A train has {0} passengers, and {1} more get on. How many passengers are on the train now?",
    ),
    "mul": (
        "There are {0} boxes with {1} pencils in each box. How many pencils are there?",
        "A hall has {0} rows of chairs with {1} chairs in each row. How many chairs are in the hall?",
        "Each of {0} buses carries {1} children. How many children are on the buses?",
    ),
    "chain": (
        "A farmer plants {0} rows of {1} trees. He already had {2} trees. How many trees does he have now?",
        "There are {0} boxes with {1} pencils in each box, and {2} loose pencils. How many pencils are there?",
    ),
    "chain2": (
        "A shop has {0} packs of {1} pens and {2} packs of {3} pens. How many pens does it have?",
        "A farm has {0} pens of {1} sheep and {2} pens of {3} goats. How many animals are on the farm?",
    ),
}
ASK = " Put the final answer in \\boxed{}."


def pose(problem: Problem) -> str:
    """The problem as a word problem, asking for a boxed answer."""
    options = PHRASINGS[problem.family]
    text = options[random.Random(f"thinktune-words:{problem.id}").randrange(len(options))]
    return text.format(*problem.operands) + ASK


def worded_completion(problem: Problem, trace: Trace) -> str:
    """The teacher's answer to the worded problem: the expression, the world's steps, the boxed answer."""
    return f"<think>{problem.question}: {trace.reasoning}</think>The answer is \\boxed{{{trace.answer}}}."
