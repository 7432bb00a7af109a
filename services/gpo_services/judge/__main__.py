from gpo_services.judge.service import main

if __name__ == "__main__":
    main()
