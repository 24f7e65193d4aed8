"""Markdown tables: the per-class table, the report's sections and the sweep summary."""


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if isinstance(value, str) and len(text) > 8 and is_number(text):
            text = f"{float(text):.4g}"  # a sampled setting (Optuna): 0.649816047538945
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
