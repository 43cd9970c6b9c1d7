"""Admin (listed only for `CZB_ADMINS`): every user's queued and running jobs with a Cancel for each, and
the disk each user holds against the quota. Workers and queue lengths are also on `GET /health`."""

import pandas as pd
import streamlit as st

from czb_core.progress import ACTIVE, progress_line
from czb_core.service.access import is_admin
from czb_core.service.quotas import format_size
from pages.common import current_user, job_manager

st.title("Admin")
if not is_admin(current_user()):  # the page is not listed for others; a typed URL finds nothing either
    st.error("Page not found.")
    st.stop()
manager = job_manager()

st.subheader("Queue")
active = manager.list(statuses=ACTIVE)
if not active:
    st.caption("No job is queued or running.")
for job in active:
    text, button = st.columns([8, 1])
    text.markdown(f"**{job.id}** · {job.owner} · {job.model} / {job.variant} on {job.device} · **{job.status}** · "
                  f"{progress_line(job.status, job.step, job.done, job.total)} · queued {job.created_at[:16]} UTC")
    if button.button("Cancel", key=f"admin_cancel_{job.id}"):
        manager.cancel(job.id, None)
        st.rerun()

st.subheader("Disk use per user")
owners = sorted({r.owner for r in manager.workspace.list()} | {j.owner for j in manager.list()})
limit = manager.quotas.limit_bytes()
rows = [{"user": owner, "datasets": len(manager.workspace.list(owner)), "runs": len(manager.list(owner=owner)),
         "disk": format_size(manager.quotas.disk_use(owner)),
         "quota": format_size(limit) if limit is not None else "none"} for owner in owners]
st.dataframe(pd.DataFrame(rows, columns=["user", "datasets", "runs", "disk", "quota"]), hide_index=True,
             width="stretch")
