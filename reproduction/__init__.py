"""What reproduce.py checks a reference table with, apart from its own steps (plan, train, evaluate, compare,
print).

The modules: plan (what a table runs: its training and eval.py arguments, and the label of a shortened trial),
folder (the reproduction's folder: whose work it holds, and what ALP.py and eval.py have finished there),
child_scripts (ALP.py and eval.py run as child processes, and ALP.py's log followed as it grows), estimate (how
long the whole will take, from ALP.py's first timings), comparison (ours beside the reference's figures, and
the spread rule that flags a figure), report (report.json, report.md, report.png and the printed table).
"""
