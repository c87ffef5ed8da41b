"""``python -m fusionsearch.cli``: how ``run --workers N`` starts its worker processes."""

from fusionsearch.cli import main

main()
