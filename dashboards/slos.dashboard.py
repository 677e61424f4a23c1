"""SLOs: for every service objective, how much error budget is left and how fast it burns.

Reads the series recorded by the SLO rules that `meshlens build` generates from alerts/slos.yaml;
the burn-rate windows are the policy's (burn_rate_alerts in slos.yaml).
"""

from meshlens import catalogue as c
from meshlens_alerts import generate, slo
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

SLO_VARIABLE = slo.SLO_LABEL
ONE_SLO = (q.regex(c.SERVICE, q.variable(c.SERVICE)), q.regex(slo.SLO_LABEL, q.variable(SLO_VARIABLE)))
# The objective is recorded once per SLO, without a namespace; the ratios are per namespace.
IN_NAMESPACE = (*ONE_SLO, q.regex(c.NAMESPACE, q.variable(c.NAMESPACE)))
WINDOWS = [window.text for window in generate.packaged_policy().windows()]
OBJECTIVE = q.selector(slo.OBJECTIVE_RECORD, ONE_SLO)
BUDGET_LEFT = q.selector(slo.BUDGET_REMAINING_RECORD, IN_NAMESPACE)
WINDOW_RATIO = q.selector(slo.SLO_WINDOW_RATIO_RECORD, IN_NAMESPACE)
PER_SLO = (c.NAMESPACE, slo.SLO_LABEL)
BUDGET_STEPS = p.thresholds("red", (0.25, "orange"), (0.5, "green"))


def burn_rate(window: str) -> str:
    """How many times faster than allowed the budget burns over the window (1 = exactly on budget)."""
    ratio = q.selector(slo.error_ratio_record(window), IN_NAMESPACE)
    return f"{ratio} / on ({slo.SLO_LABEL}) group_left () (1 - {OBJECTIVE})"


dashboard = p.dashboard(
    uid="meshlens-slos",
    title="meshlens / SLOs",
    description="Error budget left and burn rates of every SLO declared in alerts/slos.yaml.",
    tags=("slo",),
    time_from="now-7d",
    variables=[
        p.datasource_variable(),
        p.label_variable(c.NAMESPACE, slo.BUDGET_REMAINING_RECORD),
        p.label_variable(c.SERVICE, slo.BUDGET_REMAINING_RECORD, q.NAMESPACE_FILTER),
        p.label_variable(SLO_VARIABLE, slo.OBJECTIVE_RECORD, q.regex(c.SERVICE, q.variable(c.SERVICE)), title="SLO"),
    ],
    rows=[
        p.row(
            "Error budget",
            p.table(
                "Objectives",
                p.query(q.aggregate("max", OBJECTIVE, (slo.SLO_LABEL,)), instant=True),
                columns=["objective"],
                width=6,
            ),
            p.table(
                "Now, over each SLO's window",
                p.query(q.aggregate("max", BUDGET_LEFT, PER_SLO), instant=True),
                p.query(q.aggregate("max", WINDOW_RATIO, PER_SLO), instant=True),
                columns=["budget left", "error ratio"],
                decimals=4,
                width=8,
            ),
            p.timeseries(
                "Error budget left (1 = untouched, 0 = spent)",
                p.query(BUDGET_LEFT, p.legend(*PER_SLO)),
                unit="percentunit",
                steps=BUDGET_STEPS,
                width=10,
            ),
        ),
        p.row(
            "Burn rate (1 = spending the budget exactly over the SLO window)",
            *(
                p.timeseries(
                    f"Burn rate over {window}",
                    p.query(burn_rate(window), p.legend(*PER_SLO)),
                    width=6,
                )
                for window in WINDOWS
            ),
        ),
    ],
)
