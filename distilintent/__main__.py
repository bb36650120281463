from distilintent.cli import main

raise SystemExit(main())
