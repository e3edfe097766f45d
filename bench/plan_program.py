"""What limits HiGHS on one batch program of the planner benchmark.

Reads a program written by `skyweave-plan-bench --write-program PATH` (MPS)
and solves it with the same HiGHS release the planner links (through
highspy, one thread, the planner's options), in several ways:

  1. as the planner does, without a start;
  2. given the optimal plan as its start, with HiGHS's root reduced-cost
     heuristic on and off (the floor of HiGHS alone);
  3. when HiGHS itself finds its improving plans, and how much a start of
     each of those qualities helps;
  4. with a gap tolerance of $1,000 instead of $0.01;
  5. how much of the LP relaxation's gap each tight coupling row closes
     when it alone is kept integral (the others priced at their LP duals);
  6. the LP bound with an exact network (arc-flow) formulation of the small
     capacity rows (private offerings), and HiGHS's time on that model.

Run through bench/plan_program.sh, which writes the program and installs
highspy. Costs in the program are in thousands of USD.
"""

import collections
import sys
import time

import highspy
import numpy as np

RUNS = 3
INF = highspy.kHighsInf


def model(path, **options):
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(path)
    # The planner's options (crates/skyweave-compute/src/plan.rs).
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-5)
    h.setOptionValue("threads", 1)
    for name in ("mip_heuristic_run_rins", "mip_heuristic_run_rens",
                 "mip_heuristic_run_feasibility_jump"):
        h.setOptionValue(name, False)
    for name, value in options.items():
        h.setOptionValue(name, value)
    return h


def solve(h, start=None):
    if start is not None:
        solution = highspy.HighsSolution()
        solution.col_value = list(start)
        solution.value_valid = True
        h.setSolution(solution)
    began = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - began
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        sys.exit(f"HiGHS ended with {h.getModelStatus()}")
    return elapsed, h.getInfo().objective_function_value


def relax(h):
    n = h.getNumCol()
    h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.uint8))
    h.run()
    return h


def times(path, start=None, **options):
    return [solve(model(path, **options), start)[0] for _ in range(RUNS)]


def fmt(seconds):
    return ", ".join(f"{s:.3f}" for s in seconds) + " s"


def usd(thousands):
    return f"${thousands * 1000:,.0f}"


def main(path):
    base = model(path)
    lp = base.getLp()
    n = lp.num_col_
    matrix = lp.a_matrix_
    starts, index, value = (np.array(matrix.start_), np.array(matrix.index_),
                            np.array(matrix.value_))
    lower, upper = np.array(lp.row_lower_), np.array(lp.row_upper_)
    integer = np.array([int(t) for t in lp.integrality_]) != 0
    job_row = (lower == 1) & (upper == 1)
    print(f"program: {lp.num_row_} rows ({int(job_row.sum())} jobs), {n} columns")

    # 1. As the planner solves it.
    h = model(path)
    first, optimum = solve(h)
    optimal = np.array(h.getSolution().col_value)
    plain = [first] + [solve(model(path))[0] for _ in range(RUNS - 1)]
    print(f"1. no start: {fmt(plain)}; optimum {usd(optimum)}")

    # 2. The optimal plan as the start.
    with_rch = times(path, optimal)
    without = times(path, optimal, mip_heuristic_effort=0.0,
                    mip_heuristic_run_root_reduced_cost=False)
    print(f"2. optimal plan as the start: {fmt(with_rch)}; "
          f"without the root reduced-cost heuristic: {fmt(without)}")

    # 3. HiGHS's own improving plans: when they come, and what each is
    #    worth as a start.
    found = []
    h = model(path)
    began = time.perf_counter()

    def on_improving(kind, _message, data_out, _data_in, _user):
        if kind == highspy.cb.HighsCallbackType.kCallbackMipImprovingSolution:
            found.append((time.perf_counter() - began, data_out.objective_function_value,
                          np.array(data_out.mip_solution)))

    h.setCallback(on_improving, None)
    h.startCallback(highspy.cb.HighsCallbackType.kCallbackMipImprovingSolution)
    h.run()
    print("3. HiGHS's improving plans (found at; above the optimum; time with it as the start):")
    for at, objective, plan in found:
        with_it = solve(model(path), plan)[0]
        print(f"   {at:.3f} s  {usd(objective - optimum):>10}  {with_it:.3f} s")

    # 4. A looser tolerance.
    loose = times(path, mip_abs_gap=1.0)
    print(f"4. gap tolerance $1,000: {fmt(loose)}")

    # 5. The LP gap, and what keeping one tight row integral closes.
    relaxed = relax(model(path))
    bound = relaxed.getInfo().objective_function_value
    duals = np.array(relaxed.getSolution().row_dual)
    print(f"5. LP bound {usd(optimum - bound)} below the optimum; closed by keeping one row integral:")
    coupling = [r for r in range(lp.num_row_) if not job_row[r]]
    tight = [r for r in coupling if abs(duals[r]) > 1e-9]
    cost = np.array(lp.col_cost_)
    for keep in tight:
        priced = cost.copy()
        dropped = [r for r in coupling if r != keep]
        dropped_set = set(dropped)
        for c in range(n):
            for p in range(starts[c], starts[c + 1]):
                if int(index[p]) in dropped_set:
                    priced[c] -= duals[index[p]] * value[p]
        h = model(path)
        for r in dropped:
            h.changeRowBounds(r, -INF, INF)
        h.changeColsCost(n, np.arange(n, dtype=np.int32), priced)
        _, objective = solve(h)
        lagrangian = objective + sum(duals[r] * upper[r] for r in dropped)
        print(f"   row r{keep} (at most {upper[keep]:g}): {usd(lagrangian - bound)}")

    # 6. Exact network formulation of the small integer capacity rows.
    h = model(path)
    rows = arc_flow(h, n, starts, index, value, upper, job_row, capacity=64)
    strengthened = relax(arc_flow_copy(h)).getInfo().objective_function_value
    taken, objective = solve(h)
    print(f"6. arc-flow for rows {', '.join(f'r{r}' for r in rows)}: LP bound "
          f"{usd(optimum - strengthened)} below the optimum; HiGHS {taken:.3f} s")


def arc_flow_copy(h):
    copy = highspy.Highs()
    copy.setOptionValue("output_flag", False)
    copy.passModel(h.getModel())
    return copy


def arc_flow(h, n, starts, index, value, upper, job_row, capacity):
    """Adds, for every row with integer coefficients and a capacity up to
    `capacity`, the layered network of a knapsack over its jobs: one layer
    per job, one node per capacity used, an arc to skip the job and one per
    column of the job that takes its size. A column's value is the flow on
    its arcs. The network's LP is the convex hull of the row over its jobs."""
    columns_of = collections.defaultdict(list)
    job_of = {}
    for c in range(n):
        for p in range(starts[c], starts[c + 1]):
            r = int(index[p])
            columns_of[r].append((c, value[p]))
            if job_row[r]:
                job_of[c] = r
    done = []
    for r in range(len(upper)):
        if job_row[r] or upper[r] > capacity:
            continue
        items = columns_of[r]
        if any(v < 0 or v != int(v) for _, v in items) or sum(v for _, v in items) <= upper[r]:
            continue
        cap = int(upper[r])
        by_job = collections.defaultdict(list)
        for c, v in items:
            by_job[job_of[c]].append((c, int(v)))
        jobs = list(by_job)
        reach = [{0}]
        for j in jobs:
            reach.append(reach[-1] | {u + s for u in reach[-1] for _, s in by_job[j] if u + s <= cap})
        node = {}
        for layer in range(len(jobs)):
            for u in sorted(reach[layer]):
                supply = 1.0 if layer == 0 and u == 0 else 0.0
                h.addRow(supply, supply, 0, np.array([], dtype=np.int32), np.array([]))
                node[(layer, u)] = h.getNumRow() - 1
        link = {}
        for j in jobs:
            for c, _ in by_job[j]:
                h.addRow(0.0, 0.0, 1, np.array([c], dtype=np.int32), np.array([1.0]))
                link[c] = h.getNumRow() - 1
        for layer, j in enumerate(jobs):
            for u in sorted(reach[layer]):
                for c, s in [(None, 0)] + by_job[j]:
                    if u + s > cap:
                        continue
                    rows, coefficients = [node[(layer, u)]], [1.0]
                    if layer + 1 < len(jobs):
                        rows.append(node[(layer + 1, u + s)])
                        coefficients.append(-1.0)
                    if c is not None:
                        rows.append(link[c])
                        coefficients.append(-1.0)
                    h.addCol(0.0, 0.0, 1.0, len(rows), np.array(rows, dtype=np.int32),
                             np.array(coefficients))
        done.append(r)
    return done


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: plan_program.py PROGRAM.mps")
    main(sys.argv[1])
