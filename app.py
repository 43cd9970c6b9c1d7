"""CZB Studio: bring a single-cell dataset, see which models fit it, embed it, compare the results.

This script only sets up navigation; each page lives in `pages/` and calls `czb_core`.
Start with `make run` (the bundled demo) or `streamlit run app.py`.
"""

import streamlit as st

st.set_page_config(page_title="CZB Studio", page_icon="🧬", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/dataset.py", title="1. Dataset", url_path="dataset", default=True),
        st.Page("pages/validate.py", title="2. Validate", url_path="validate"),
        st.Page("pages/run.py", title="3. Run", url_path="run"),
        st.Page("pages/results.py", title="4. Results", url_path="results"),
    ]
)
navigation.run()
