from ema_lint.cli import main

main()
