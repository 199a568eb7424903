"""Review: placeholder until bdcore.evaluate lands."""
import streamlit as st

st.title("Review")
